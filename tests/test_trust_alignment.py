"""`sharpdiv connectivity --align` and the report's before/after view, end to end at tiny size:
aligned rows equal a direct call on members permuted to member 0, say so in their settings, are
reused, bad --align values write nothing, and the report puts barriers before and after alignment
next to DER and EIR."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import cli
import landscape.alignment
import landscape.connectivity
from ensembles.data import datasets
from ensembles.models.permutation_specs import zoo_permutation_spec
from ensembles.models.zoo import build
from ensembles.runs import run_folder

OPTIONS = ("--n-examples", 40, "--alphas", 3, "--bn-examples", 48, "--batch-size", 20, "--seed", 2,
           "--device", "cpu")


def make_run(path, n_members=3, seed=0):
    run_folder.create_run(path, dataset="digits", num_classes=10, model="small_cnn", model_args={"width": 4},
                          seeds=list(range(n_members)))
    for index in range(n_members):
        torch.manual_seed(seed + index)
        network = build("small_cnn", 10, width=4)
        generator = torch.Generator().manual_seed(seed + index)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
        run_folder.save_member(path, index, network)
    return path


def invoke(*arguments):
    return CliRunner().invoke(cli.main, [str(a) for a in arguments])


def barrier_rows(path):
    table = run_folder.read_results(path, current_only=True)
    table = table[table["metric"] == "connectivity/barrier"]
    table = table.assign(**{key: [json.loads(text).get(key) for text in table["settings"]]
                            for key in ("alignment", "aligned_to", "align_seed", "align_examples")})
    return table.assign(alignment=table["alignment"].fillna("none"))  # unaligned rows carry no alignment


def loaders(seed=2):
    test = datasets.load_dataset("digits", split="test")
    train = datasets.load_dataset("digits", split="train")
    loader = [(test.batch(np.arange(start, start + 20)), test.targets[start:start + 20]) for start in (0, 20)]
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:48]
    bn_loader = [(train.batch(rows.numpy()), train.targets[rows]) for rows in chosen.split(20)]
    return loader, bn_loader


def test_connectivity_align_weight_and_none_stores_both_and_states_the_reference(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run")
    result = invoke("connectivity", path, *OPTIONS, "--align", "weight,none", "--plane", "--grid", 3)
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
    again = invoke("connectivity", path, *OPTIONS, "--align", "none,weight", "--plane", "--grid", 3)
    assert again.exit_code == 0 and calls == []  # all stored: no member is aligned again


def test_activation_alignment_rows_name_their_samples(tmp_path):
    path = make_run(tmp_path / "run", n_members=2)
    result = invoke("connectivity", path, *OPTIONS, "--align", "activation")
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
    path = make_run(tmp_path / "run", n_members=2)
    result = invoke("connectivity", path, *OPTIONS, "--align", "none,permute")
    assert result.exit_code == 2 and "--align permute" in result.output
    assert run_folder.read_results(path).empty


def test_report_shows_barriers_before_and_after_alignment_next_to_der_and_eir(tmp_path):
    import results_fixtures as fixtures
    from reports.site import write_report

    paths = [make_run(tmp_path / f"run-{seed}", n_members=2, seed=10 * seed) for seed in (1, 2)]
    eirs = {}
    for seed, path in zip((1, 2), paths):
        result = invoke("connectivity", path, *OPTIONS, "--align", "weight,none")
        assert result.exit_code == 0, result.output + repr(result.exception)
        eirs[path.name] = 0.1 * seed
        run_folder.append_results(path, fixtures.evaluation_rows(
            [0.5, 0.6, 0.7], {"accuracy": 0.7, "der": 0.3 * seed, "eir": eirs[path.name]}))
    result = invoke("report", *paths, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output + repr(result.exception)

    table = (tmp_path / "report" / "tables" / "connectivity.csv")
    numbers = __import__("pandas").read_csv(table).set_index("run")
    for path in paths:
        rows = barrier_rows(path)
        for kind, column in (("none", "mean barrier, no alignment"), ("weight", "mean barrier, weight alignment")):
            assert numbers.loc[path.name, column] == pytest.approx(rows[rows["alignment"] == kind]["value"].mean())
        assert numbers.loc[path.name, "EIR ID"] == pytest.approx(eirs[path.name])
        assert numbers.loc[path.name, "DER ID"] == pytest.approx(0.3 if path.name.endswith("1") else 0.6)
    assert (tmp_path / "report" / "figures" / "barrier-eir.png").is_file()
    assert "connectivity" in (tmp_path / "report" / "README.md").read_text()

    report = write_report(paths, tmp_path / "again")
    scatter = report.rendered["barrier-eir"].figures[0].axes[0]
    points = {(round(float(x), 9), round(float(y), 9)) for collection in scatter.collections
              for x, y in collection.get_offsets()}
    expected = {(round(float(numbers.loc[p.name, c]), 9), round(eirs[p.name], 9)) for p in paths
                for c in ("mean barrier, no alignment", "mean barrier, weight alignment")}
    assert points == expected
    heatmaps = [ax for ax in report.rendered["barriers"].figures[0].axes if ax.get_xlabel() == "Member"]
    assert len(heatmaps) == 2 and "weight matching" in heatmaps[1].get_title()
    loss_ax = report.rendered["interpolation"].figures[0].axes[0]
    labels = {line.get_label() for line in loss_ax.get_lines()}
    assert labels == {"members 0–1", "members 0–1, weight-aligned"}
