"""The q rows of `sharpdiv connectivity` on small trained digits MLPs: each pair's q is that of its
stored path and q_bar their mean over the pairs; identical members have q = 1, a permuted copy a low q
before alignment and 1 after, and aligned rows say so in their settings. Tables written before q existed:
q comes from their stored paths (exactly the numbers a fresh measurement gives, on exactly the
requested grid, never from rows of other weights), a partial path is measured again, and weights
replaced during the work store nothing."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import cli
import landscape.connectivity
from ensembles.data import datasets
from ensembles.models.permutation_specs import zoo_permutation_spec
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from ensembles.runs.files import file_digest
from ensembles.studies import measurements
from landscape.alignment import apply_permutation
from landscape.connectivity import Interpolation, pair_connectivity
from landscape.errors import InputError

MLP = {"input_size": 3 * 32 * 32, "hidden": [32]}
OPTIONS = dict(n_examples=120, alphas=5, batch_size=60)
Q = ("connectivity/q", "connectivity/q_loss")
Q_BAR = ("connectivity/q_bar", "connectivity/q_loss_bar")


def trained_mlp(seed, epochs=4):
    train = datasets.load_dataset("digits", split="train")
    x, y = train.batch(np.arange(len(train))), train.targets
    torch.manual_seed(seed)
    model = build("mlp", 10, **MLP)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for rows in torch.randperm(len(y), generator=generator).split(128):
            optimizer.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def networks():
    """A trained MLP, a randomly permuted copy of it (the same function in another basin) and a
    second MLP trained from another seed."""
    first = trained_mlp(0)
    spec = zoo_permutation_spec(first)
    generator = torch.Generator().manual_seed(7)
    permuted = apply_permutation(first, {group: torch.randperm(size, generator=generator).roll(1)
                                         for group, size in spec.sizes.items()}, spec)
    return {"first": first, "permuted": permuted, "other": trained_mlp(1)}


def make_run(path, members):
    run_folder.create_run(path, dataset="digits", num_classes=10, model="mlp", model_args=MLP,
                          seeds=list(range(len(members))))
    for index, network in enumerate(members):
        run_folder.save_member(path, index, network)
    return path


def table(path, metrics=None):
    rows = run_folder.read_results(path, current_only=True)
    rows = rows.assign(alignment=[json.loads(text).get("alignment", "none") for text in rows["settings"]])
    return rows if metrics is None else rows[rows["metric"].isin(metrics)]


def value(path, scope, metric, alignment="none", alphas=OPTIONS["alphas"]):
    rows = table(path, [metric])
    grid = rows["settings"].map(lambda text: json.loads(text)["alphas"]) == alphas
    (found,) = rows[(rows["scope"] == scope) & (rows["alignment"] == alignment) & grid]["value"]
    return found


def stored_path(path, scope, alignment="none"):
    rows = table(path, ["connectivity/loss", "connectivity/accuracy"])
    rows = rows[(rows["scope"] == scope) & (rows["alignment"] == alignment)]
    curve = {metric: part.sort_values("alpha") for metric, part in rows.groupby("metric")}
    as_tensor = lambda column: torch.tensor(column.to_numpy(dtype=float), dtype=torch.float64)  # noqa: E731
    return Interpolation(alphas=as_tensor(curve["connectivity/loss"]["alpha"]),
                         loss=as_tensor(curve["connectivity/loss"]["value"]),
                         accuracy=as_tensor(curve["connectivity/accuracy"]["value"]), bn_mode="none")


def counting(monkeypatch, name="loss_barrier"):
    calls, original = [], getattr(landscape.connectivity, name)
    monkeypatch.setattr(landscape.connectivity, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def keyed(rows):
    """Rows by what they measure (scope, metric, settings), with their values."""
    return {(row["scope"], row["metric"], row["settings"]): row["value"] for _, row in rows.iterrows()}


# ----------------------------------------------------------------------------------------------
# fresh measurements


def test_each_pair_has_the_q_of_its_stored_path_and_the_ensemble_their_mean(networks, tmp_path):
    path = make_run(tmp_path / "run", [networks["first"], networks["permuted"], networks["other"]])
    (measurement,) = measurements.measure_connectivity([path], **OPTIONS)
    pairs = ("pair-0-1", "pair-0-2", "pair-1-2")
    for scope in pairs:
        expected = pair_connectivity(stored_path(path, scope))
        assert value(path, scope, "connectivity/q") == expected.q
        assert value(path, scope, "connectivity/q_loss") == expected.q_loss
    barrier = table(path, ["connectivity/barrier"]).iloc[0]
    for row in table(path, Q + Q_BAR).itertuples():
        assert json.loads(row.settings) == {**json.loads(barrier["settings"]),
                                            **({"aggregate": "mean"} if row.scope == "ensemble" else {})}
    for per_pair, mean in zip(Q, Q_BAR):
        values = np.array([value(path, scope, per_pair) for scope in pairs])
        row = table(path, [mean]).iloc[0]
        assert row["scope"] == "ensemble" and row["value"] == pytest.approx(values.mean(), rel=1e-15)
        assert row["stderr"] == pytest.approx(values.std(ddof=1) / math.sqrt(3), rel=1e-12)
    q_bar = table(path, ["connectivity/q_bar"])["value"].item()
    assert any(line.strip().startswith("q̄ = ") and f"{q_bar:.4g}" in line for line in measurement.summary())


def test_identical_members_q_one_a_permuted_copy_low_until_aligned(networks, tmp_path):
    path = make_run(tmp_path / "run", [networks["first"], networks["first"], networks["permuted"]])
    result = CliRunner().invoke(cli.main, ["connectivity", str(path), "--n-examples", "120", "--alphas", "5",
                                           "--batch-size", "60", "--align", "weight,none", "--seed", "3",
                                           "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.output.count("q̄ = ") == 2  # once per alignment
    assert value(path, "pair-0-1", "connectivity/q") == 1.0  # identical: the path is the member
    assert value(path, "pair-0-2", "connectivity/q") < 0.7  # the same function, in another basin
    assert value(path, "pair-0-2", "connectivity/q_loss") < 0.5
    for scope in ("pair-0-1", "pair-0-2", "pair-1-2"):  # weight matching finds the permutation again
        assert value(path, scope, "connectivity/q", "weight") == pytest.approx(1.0, abs=1e-6)
    aligned = table(path, Q + Q_BAR)
    aligned = aligned[aligned["alignment"] == "weight"]
    assert len(aligned) == 8
    for settings in aligned["settings"].map(json.loads):
        assert (settings["alignment"], settings["aligned_to"], settings["align_seed"]) == ("weight", 0, 3)
        assert settings["reference_weights"] == file_digest(run_folder.member_path(path, 0))
    assert value(path, "ensemble", "connectivity/q_bar") < value(path, "ensemble", "connectivity/q_bar", "weight")


# ----------------------------------------------------------------------------------------------
# tables written before q existed


@pytest.fixture(scope="module")
def measured(networks, tmp_path_factory):
    """A run measured unaligned and aligned, on 5 and on 9 points: its members and its rows."""
    path = make_run(tmp_path_factory.mktemp("measured") / "run",
                    [networks["first"], networks["permuted"], networks["other"]])
    measurements.measure_connectivity([path], **OPTIONS, align="none,weight")
    rows = run_folder.read_results(path, current_only=True)
    measurements.measure_connectivity([path], **{**OPTIONS, "alphas": 9})
    return path, rows, run_folder.read_results(path, current_only=True)


def as_before(path, rows, tmp_path, name="old"):
    """A copy of the run whose table holds ``rows`` without any q row, as a table written before q."""
    copy = tmp_path / name
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns(run_folder.RESULTS_DIR))
    old = rows[~rows["metric"].isin(Q + Q_BAR)]
    records = [{**json.loads(row["settings"]), "scope": row["scope"], "metric": row["metric"], "value": row["value"],
                "stderr": row["stderr"], "dataset": row["dataset"], "split": row["split"], "data": row["data"]}
               for _, row in old.iterrows()]
    run_folder.append_results(copy, records)
    return copy


def test_an_old_table_gets_q_from_its_stored_paths_exactly_as_measured(measured, tmp_path, monkeypatch):
    path, rows, _ = measured
    old = as_before(path, rows, tmp_path)
    calls = counting(monkeypatch)
    (unaligned, aligned) = measurements.measure_connectivity([old], **OPTIONS, align="none,weight")
    assert calls == [] and unaligned.computed == aligned.computed == ()  # no path measured again
    assert len(unaligned.reused) == len(aligned.reused) == 3
    fresh = rows[rows["metric"].isin(Q + Q_BAR)]
    derived = run_folder.read_results(old, current_only=True)
    derived = derived[derived["metric"].isin(Q + Q_BAR)]
    assert keyed(derived) == keyed(fresh)  # the same rows, bit for bit, aligned ones with their settings
    assert len(derived) == 16 and set(derived["weights"]) <= set(rows["weights"])
    (again,) = measurements.measure_connectivity([old], **OPTIONS)
    assert again.rows == [] and calls == []


def test_q_of_an_old_table_reads_only_the_requested_grid(measured, tmp_path, monkeypatch):
    path, five, both = measured
    nine = both[~both["key"].isin(five["key"])]
    assert set(json.loads(s).get("alphas") for s in nine[nine["metric"] == "connectivity/q"]["settings"]) == {9}
    fresh_five = keyed(five[(five["metric"] == "connectivity/q") & ~five["settings"].str.contains("alignment")])
    fresh_nine = keyed(nine[nine["metric"] == "connectivity/q"])
    assert sorted(fresh_five.values()) != sorted(fresh_nine.values())  # the grids give other q here
    # the table holds the 9-point paths (whose 5 of 9 points are the 5-point paths) and both barriers
    old = as_before(path, both, tmp_path)
    calls = counting(monkeypatch)
    measurements.measure_connectivity([old], **OPTIONS)
    assert calls == []
    derived = run_folder.read_results(old, current_only=True)
    assert keyed(derived[derived["metric"] == "connectivity/q"]) == fresh_five


def test_an_old_path_missing_a_point_is_measured_again(measured, tmp_path, monkeypatch):
    path, rows, _ = measured
    rows = rows[rows["settings"].map(lambda text: "alignment" not in json.loads(text))]
    gap = (rows["scope"] == "pair-0-2") & (rows["metric"] == "connectivity/accuracy") & (rows["alpha"] == 0.25)
    assert gap.sum() == 1
    old = as_before(path, rows[~gap], tmp_path)
    calls = counting(monkeypatch)
    (measurement,) = measurements.measure_connectivity([old], **OPTIONS)
    assert len(calls) == 1 and measurement.computed == ("pair-0-2",)
    assert value(old, "pair-0-2", "connectivity/q") == value(path, "pair-0-2", "connectivity/q")


def test_old_rows_of_other_weights_or_another_alignment_are_not_used(measured, networks, tmp_path, monkeypatch):
    path, rows, _ = measured
    unaligned = rows[rows["settings"].map(lambda text: "alignment" not in json.loads(text))]
    old = as_before(path, unaligned, tmp_path)
    run_folder.save_member(old, 2, trained_mlp(2, epochs=1))  # its pairs' rows are stale now
    calls = counting(monkeypatch)
    (none, weight) = measurements.measure_connectivity([old], **OPTIONS, align="none,weight")
    assert none.computed == ("pair-0-2", "pair-1-2") and none.reused == ("pair-0-1",)
    assert weight.computed == ("pair-0-1", "pair-0-2", "pair-1-2")  # never taken from unaligned paths
    assert len(calls) == 5
    assert value(old, "pair-0-1", "connectivity/q") == value(path, "pair-0-1", "connectivity/q")
    assert value(old, "pair-0-2", "connectivity/q") != value(path, "pair-0-2", "connectivity/q")
    assert value(old, "pair-0-2", "connectivity/q") == pair_connectivity(stored_path(old, "pair-0-2")).q


def test_weights_replaced_while_q_is_derived_store_no_q(measured, networks, tmp_path, monkeypatch):
    path, rows, _ = measured
    old = as_before(path, rows[rows["settings"].map(lambda text: "alignment" not in json.loads(text))], tmp_path)
    original = landscape.connectivity.pair_connectivity

    def replacing(*args, **kwargs):  # another process retrains member 1 meanwhile
        if not replacing.done:
            run_folder.save_member(old, 1, networks["other"])
            replacing.done = True
        return original(*args, **kwargs)

    replacing.done = False
    monkeypatch.setattr(landscape.connectivity, "pair_connectivity", replacing)
    with pytest.raises(InputError, match="changed during the measurement"):
        measurements.measure_connectivity([old], **OPTIONS)
    assert run_folder.read_results(old)["metric"].isin(Q + Q_BAR).sum() == 0


def test_weights_replaced_after_the_table_was_read_are_measured_not_derived(measured, networks, tmp_path,
                                                                            monkeypatch):
    path, rows, _ = measured
    old = as_before(path, rows[rows["settings"].map(lambda text: "alignment" not in json.loads(text))], tmp_path)
    original = measurements._StoredRows.__init__

    def read_then_replace(self, run_path):  # the rows read are current; member 1 is retrained just after
        original(self, run_path)
        run_folder.save_member(old, 1, networks["other"])

    monkeypatch.setattr(measurements._StoredRows, "__init__", read_then_replace)
    calls = counting(monkeypatch)
    (measurement,) = measurements.measure_connectivity([old], **OPTIONS)
    assert measurement.computed == ("pair-0-1", "pair-1-2") and len(calls) == 2
    monkeypatch.setattr(measurements._StoredRows, "__init__", original)
    assert value(old, "pair-0-1", "connectivity/q") == pair_connectivity(stored_path(old, "pair-0-1")).q
    assert value(old, "pair-0-2", "connectivity/q") == value(path, "pair-0-2", "connectivity/q")
