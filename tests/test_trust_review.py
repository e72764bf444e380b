"""Numbers that could belong to other weights, data or settings are not taken for current ones."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ensembles.runs import files
from reports import collect


def test_file_digest_sees_a_replaced_file_of_same_size_and_mtime(tmp_path):
    """A member rewritten (temporary file + rename, as save_member does) with the same size within one
    timestamp tick must not keep the old digest: rows and cached logits of the old weights would pass."""
    target = tmp_path / "member-0.safetensors"
    target.write_bytes(b"a" * 64)
    before = files.file_digest(target)
    stat = target.stat()
    replacement = tmp_path / ".member-0.tmp"
    replacement.write_bytes(b"b" * 64)
    os.replace(replacement, target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a coarse clock: the same mtime
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    assert files.file_digest(target) != before


def _barrier_rows(entries, n_members=3):
    """Results rows as :func:`reports.collect.collect` gives them: (pair, value, split, settings, created)."""
    return pd.DataFrame([{"path": "R", "scope": f"pair-{i}-{j}", "metric": "connectivity/barrier", "value": value,
                          "stderr": np.nan, "dataset": "digits", "split": split, "corruption": None,
                          "severity": None, "settings": settings, "data": f"fingerprint-{split}",
                          "created": f"2024-01-01T00:00:{created:02d}", "run.n_members": n_members}
                         for (i, j), value, split, settings, created in entries])


def test_mean_barrier_is_one_measurement_of_every_pair():
    """The mean barrier of a run is one measurement (settings, data) of every member pair, never a mix."""
    test = [((0, 1), 1.0, "test", "A", 1), ((0, 2), 2.0, "test", "A", 2), ((1, 2), 3.0, "test", "A", 3)]
    assert collect.barriers_per_run(_barrier_rows(test))["none"]["R"] == 2.0
    # the same pair on another split (same settings) later: not averaged in with the test split's pairs
    on_val = test + [((0, 1), 100.0, "val", "A", 4)]
    assert collect.barriers_per_run(_barrier_rows(on_val))["none"]["R"] == 2.0
    # one pair re-measured with other settings (an interrupted call): the complete measurement counts
    mixed = test + [((0, 1), 50.0, "test", "B", 5)]
    assert collect.barriers_per_run(_barrier_rows(mixed))["none"]["R"] == 2.0
    # a pair missing (a member added since, or an interrupted first call): no mean over some pairs
    assert np.isnan(collect.barriers_per_run(_barrier_rows(test[:2]))["none"]["R"])


def test_member_mean_is_never_a_mix_of_settings():
    """Without an ensemble row the report averages member rows: they must all be of one measurement.
    Member 0 re-measured with other settings (a call interrupted after it) leaves member 1 at the
    old ones; the mean of the two is no measurement at all."""
    def row(member, value, settings, created):
        return {"path": "R", "scope": f"member-{member}", "metric": "sharpness/worst/l2/adaptive", "value": value,
                "stderr": np.nan, "dataset": "digits", "split": "train", "corruption": None, "severity": None,
                "settings": settings, "rho": 0.5, "created": f"2024-01-01T00:00:{created:02d}", "run.n_members": 2}
    spec = collect.SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5")
    same = pd.DataFrame([row(0, 1.0, "A", 1), row(1, 3.0, "A", 2)])
    assert collect.sharpness_per_run(same, spec)["R"] == 2.0
    mixed = pd.DataFrame([row(0, 1.0, "A", 1), row(1, 3.0, "A", 2), row(0, 10.0, "B", 3)])
    assert np.isnan(collect.sharpness_per_run(mixed, spec)["R"])


def test_aligned_pair_rows_follow_the_reference_members_weights(tmp_path):
    """Aligned barriers of pair 1-2 depend on member 0 (the reference): new weights of member 0 must
    not let the old pair-1-2 rows pass as current."""
    import json

    import torch.nn.functional as F

    import landscape.alignment
    import landscape.connectivity
    from ensembles.models.permutation_specs import zoo_permutation_spec
    from ensembles.models.zoo import build
    from ensembles.runs import run_folder
    from test_trust_alignment import OPTIONS, invoke, loaders, make_run

    path = make_run(tmp_path / "run")
    assert invoke("connectivity", path, *OPTIONS, "--align", "weight").exit_code == 0
    import torch
    torch.manual_seed(99)
    run_folder.save_member(path, 0, build("small_cnn", 10, width=4))  # member 0 retrained
    result = invoke("connectivity", path, *OPTIONS, "--align", "weight")
    assert result.exit_code == 0, result.output
    assert "3 pairs measured now, 0 stored" in result.output  # pair 1-2 too: its reference changed
    table = run_folder.read_results(path, current_only=True)
    rows = table[(table["metric"] == "connectivity/barrier") & (table["scope"] == "pair-1-2")]
    rows = rows[[json.loads(text).get("alignment") == "weight" for text in rows["settings"]]]
    loader, bn_loader = loaders()
    m0, m1, m2 = run_folder.load_run(path).members
    spec = zoo_permutation_spec(m0)
    a1, a2 = (landscape.alignment.weight_matching(m0, m, spec, seed=2) for m in (m1, m2))
    expected = landscape.connectivity.loss_barrier(a1, a2, F.cross_entropy, loader, alphas=3,
                                                   bn_batches=bn_loader).value
    newest = rows.sort_values("created")["value"].iloc[-1]
    assert abs(newest - expected) < 1e-6


def test_aligned_rows_turn_stale_when_the_reference_member_changes(tmp_path):
    """read_results marks pair-1-2's aligned rows stale once member 0 (their reference) has new
    weights, although pair 1-2's own members did not change; unaligned rows of that pair stay."""
    import json

    import torch

    from ensembles.models.zoo import build
    from ensembles.runs import run_folder
    from test_trust_alignment import OPTIONS, invoke, make_run

    path = make_run(tmp_path / "run")
    assert invoke("connectivity", path, *OPTIONS, "--align", "weight,none").exit_code == 0

    def pair_rows(alignment):
        table = run_folder.read_results(path, current_only=True)
        rows = table[(table["metric"] == "connectivity/barrier") & (table["scope"] == "pair-1-2")]
        return rows[[json.loads(text).get("alignment", "none") == alignment for text in rows["settings"]]]

    assert len(pair_rows("weight")) == 1 and len(pair_rows("none")) == 1
    torch.manual_seed(99)
    run_folder.save_member(path, 0, build("small_cnn", 10, width=4))  # member 0 retrained
    assert pair_rows("weight").empty
    assert len(pair_rows("none")) == 1
