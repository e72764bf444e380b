"""Aligned connectivity rows (`sharpdiv connectivity --align`, ensembles.studies.measurements):
aligned rows equal a direct call on members permuted to member 0, say so in their settings, follow
the reference member's weights, are reused, and bad --align values write nothing."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import landscape.alignment
import landscape.connectivity
from ensembles.data import datasets
from ensembles.models import permutation_specs, zoo
from ensembles.models.permutation_specs import zoo_permutation_spec
from ensembles.runs import run_folder
from landscape.alignment import apply_permutation

from measured_runs import CONNECTIVITY, barrier_rows, make_seeded_run
from permuted_models import shuffle
from tiny_runs import invoke


def images(seed, count=16, size=32):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------- a timm model, end to end


TIMM_OPTIONS = ("--n-examples", 20, "--alphas", 3, "--bn-examples", 40, "--batch-size", 20, "--seed", 1, "--device", "cpu")


def test_connectivity_aligns_a_timm_model_and_finds_a_permuted_member_again(tmp_path):
    """Member 1 is member 0 with its units permuted: unaligned, the straight path between them
    leaves the basin; weight- or activation-aligned, the pair is one network and the barrier is 0."""
    path = tmp_path / "run"
    run_folder.create_run(path, dataset="digits", num_classes=10, model="timm:test_vit",
                          model_args={"img_size": 32}, seeds=[0, 1])
    torch.manual_seed(0)
    member = zoo.build("timm:test_vit", 10, img_size=32)
    spec = permutation_specs.permutation_spec(member, images(0, 2).float())
    run_folder.save_member(path, 0, member)
    run_folder.save_member(path, 1, apply_permutation(member, shuffle(spec, 5), spec))
    result = invoke("connectivity", path, *TIMM_OPTIONS, "--align", "none,weight,activation")
    assert result.exit_code == 0, result.output + repr(result.exception)
    table = run_folder.read_results(path, current_only=True)
    table = table[table["metric"] == "connectivity/barrier"]
    settings = [json.loads(text) for text in table["settings"]]
    barrier = {s.get("alignment", "none"): value for s, value in zip(settings, table["value"])}
    assert barrier["none"] > 1e-3
    assert abs(barrier["weight"]) < 1e-5 and abs(barrier["activation"]) < 1e-5
    digests = {s.get("align_spec") for s in settings if "alignment" in s}
    assert digests == {permutation_specs.spec_digest(spec)}  # aligned rows name the traced groups
    assert "align_spec" not in next(s for s in settings if "alignment" not in s)


def test_zoo_aligned_rows_keep_the_settings_they_always_had(tmp_path):
    """The zoo's hand-written groups are the ones aligned rows were stored with before groups could
    be traced: those rows carry no align_spec, so stored ones are still reused."""
    path = make_seeded_run(tmp_path / "run", n_members=2)
    assert invoke("connectivity", path, *CONNECTIVITY, "--align", "weight").exit_code == 0
    table = run_folder.read_results(path, current_only=True)
    (settings,) = [json.loads(text) for text in table[table["metric"] == "connectivity/barrier"]["settings"]]
    assert sorted(settings) == ["align_seed", "aligned_to", "alignment", "alphas", "batch_size", "bn_examples",
                                "bn_mode", "n_examples", "reference_weights", "seed"]


def loaders(seed=2):
    test = datasets.load_dataset("digits", split="test")
    train = datasets.load_dataset("digits", split="train")
    loader = [(test.batch(np.arange(start, start + 20)), test.targets[start:start + 20]) for start in (0, 20)]
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:48]
    bn_loader = [(train.batch(rows.numpy()), train.targets[rows]) for rows in chosen.split(20)]
    return loader, bn_loader


def test_connectivity_align_weight_and_none_stores_both_and_states_the_reference(tmp_path, monkeypatch):
    path = make_seeded_run(tmp_path / "run")
    result = invoke("connectivity", path, *CONNECTIVITY, "--align", "weight,none", "--plane", "--grid", 3)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "alignment weight (to member 0)" in result.output and "alignment none" in result.output
    rows = barrier_rows(path)
    assert sorted(rows["alignment"]) == ["none"] * 3 + ["weight"] * 3
    aligned = rows[rows["alignment"] == "weight"]
    assert set(aligned["aligned_to"]) == {0} and set(aligned["align_seed"]) == {2}
    unaligned_settings = [json.loads(text) for text in rows[rows["alignment"] == "none"]["settings"]]
    assert not any({"alignment", "aligned_to", "align_seed"} & set(settings) for settings in unaligned_settings)

    loader, bn_loader = loaders()
    run = run_folder.load_run(path)
    m0, m1, m2 = run.members
    spec = zoo_permutation_spec(m0)
    a1, a2 = (landscape.alignment.weight_matching(m0, m, spec, seed=2) for m in (m1, m2))
    for scope, a, b in (("pair-0-1", m0, a1), ("pair-1-2", a1, a2)):
        expected = landscape.connectivity.loss_barrier(a, b, F.cross_entropy, loader, alphas=3,
                                                       bn_batches=bn_loader).value
        stored = aligned[aligned["scope"] == scope]["value"].item()
        assert stored == pytest.approx(expected, abs=1e-6)
    plain = landscape.connectivity.loss_barrier(m1, m2, F.cross_entropy, loader, alphas=3,
                                                bn_batches=bn_loader).value
    unaligned = rows[rows["alignment"] == "none"]
    assert unaligned[unaligned["scope"] == "pair-1-2"]["value"].item() == pytest.approx(plain, abs=1e-6)
    planes = run_folder.read_results(path, current_only=True)
    planes = planes[planes["metric"] == "plane/loss"]
    surface = planes[planes["scope"] == "ensemble"]  # the members' own positions are member-<i> rows
    assert sorted(json.loads(t).get("alignment", "none") for t in surface["settings"]) == ["none"] * 9 + ["weight"] * 9
    assert sorted(planes[planes["scope"] != "ensemble"]["scope"]) == sorted(["member-0", "member-1", "member-2"] * 2)

    calls = []
    original = landscape.alignment.weight_matching
    monkeypatch.setattr(landscape.alignment, "weight_matching", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = invoke("connectivity", path, *CONNECTIVITY, "--align", "none,weight", "--plane", "--grid", 3)
    assert again.exit_code == 0 and calls == []  # all stored: no member is aligned again


def test_activation_alignment_rows_name_their_samples(tmp_path):
    path = make_seeded_run(tmp_path / "run", n_members=2)
    result = invoke("connectivity", path, *CONNECTIVITY, "--align", "activation")
    assert result.exit_code == 0, result.output + repr(result.exception)
    rows = barrier_rows(path)
    assert list(rows["alignment"]) == ["activation"] and list(rows["align_examples"]) == [48]
    loader, bn_loader = loaders()
    m0, m1 = run_folder.load_run(path).members
    expected = landscape.connectivity.loss_barrier(
        m0, landscape.alignment.activation_matching(m0, m1, zoo_permutation_spec(m0), bn_loader), F.cross_entropy,
        loader, alphas=3,
        bn_batches=bn_loader).value
    assert rows["value"].item() == pytest.approx(expected, abs=1e-6)


def test_a_bad_align_value_writes_nothing(tmp_path):
    path = make_seeded_run(tmp_path / "run", n_members=2)
    result = invoke("connectivity", path, *CONNECTIVITY, "--align", "none,permute")
    assert result.exit_code == 2 and "--align permute" in result.output
    assert run_folder.read_results(path).empty


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

    path = make_seeded_run(tmp_path / "run")
    assert invoke("connectivity", path, *CONNECTIVITY, "--align", "weight").exit_code == 0
    import torch
    torch.manual_seed(99)
    run_folder.save_member(path, 0, build("small_cnn", 10, width=4))  # member 0 retrained
    result = invoke("connectivity", path, *CONNECTIVITY, "--align", "weight")
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

    path = make_seeded_run(tmp_path / "run")
    assert invoke("connectivity", path, *CONNECTIVITY, "--align", "weight,none").exit_code == 0

    def pair_rows(alignment):
        table = run_folder.read_results(path, current_only=True)
        rows = table[(table["metric"] == "connectivity/barrier") & (table["scope"] == "pair-1-2")]
        return rows[[json.loads(text).get("alignment", "none") == alignment for text in rows["settings"]]]

    assert len(pair_rows("weight")) == 1 and len(pair_rows("none")) == 1
    torch.manual_seed(99)
    run_folder.save_member(path, 0, build("small_cnn", 10, width=4))  # member 0 retrained
    assert pair_rows("weight").empty
    assert len(pair_rows("none")) == 1
