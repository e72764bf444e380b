"""What the single-basin study (examples/single-basin.toml) reads from the report besides the
section's tables: the figure's second row on corrupted data, and the grouping of every other table by
construction with the deep ensemble as the baseline."""
import numpy as np
import pandas as pd
import pytest

from reports import single_basin
from reports.collect import collect, run_table
from reports.single_basin import DEEP, single_basin_points, with_constructions
from reports.site import write_report
from tests.reports.test_single_basin import CONSTRUCTIONS, SEEDS, write_runs

CORRUPTED = ("fog", "contrast")


@pytest.fixture
def study(tmp_path):
    truth = write_runs(tmp_path / "runs", np.random.default_rng(5))
    runs = run_table(list(truth))
    return truth, runs, collect(runs["path"], runs)


def _corrupted(record, of):
    """Mean over the corrupted slices of the ensemble accuracy (``of="ensemble"``) or of the mean
    member accuracy, in percent, from what was written."""
    values = [record["slices"][c][1]["accuracy"] if of == "ensemble" else np.mean(record["slices"][c][0])
              for c in CORRUPTED]
    return 100 * np.mean(values)


def test_the_figure_shows_accuracy_on_corrupted_data_below_the_clean_one(study, tmp_path):
    truth, runs, results = study
    points = single_basin_points(results, runs)
    figure = single_basin.plot_single_basin(points, tmp_path / "figures", formats=("png",)).figures[0]
    clean, corrupted = figure.axes[0], figure.axes[1]
    assert "clean test data" in clean.get_title() and "corrupted data" in corrupted.get_title()
    drawn = {collection.get_label(): collection.get_offsets() for collection in corrupted.collections}
    for label in CONSTRUCTIONS:
        mine = points[points["construction"] == label]
        expected = [(record["q"], _corrupted(record, "ensemble")) for record in truth.values()
                    if record["construction"] == label]
        np.testing.assert_allclose(np.asarray(drawn[label]), mine[["q̄", "accuracy OOD (%)"]].to_numpy())
        np.testing.assert_allclose(sorted(map(tuple, np.asarray(drawn[label]))), sorted(expected), rtol=1e-12)
    deep = [record for record in truth.values() if record["construction"] == DEEP]
    lines = {line.get_linestyle(): line.get_ydata()[0] for line in corrupted.lines if line.get_linestyle() != "-"}
    assert lines["--"] == pytest.approx(np.mean([_corrupted(r, "ensemble") for r in deep]), rel=1e-12)
    assert lines[":"] == pytest.approx(np.mean([_corrupted(r, "members") for r in deep]), rel=1e-12)


def test_runs_never_evaluated_on_corrupted_data_get_the_clean_panel_only(tmp_path, monkeypatch):
    monkeypatch.setattr("tests.reports.test_single_basin.SLICES", ((None, None),))
    truth = write_runs(tmp_path / "runs", np.random.default_rng(6),
                       constructions={DEEP: ({}, SEEDS), "spawned at epoch 2": ({"spawn_epoch": 2}, SEEDS)})
    runs = run_table(list(truth))
    points = single_basin_points(collect(runs["path"], runs), runs)
    assert points["accuracy OOD (%)"].isna().all()
    figure = single_basin.plot_single_basin(points, tmp_path / "figures", formats=("png",)).figures[0]
    assert len(figure.axes) == 1 and "clean test data" in figure.axes[0].get_title()


def test_runs_gain_their_construction_as_a_field_only_when_grouped_by_it(study):
    truth, runs, _ = study
    grouped = with_constructions(runs, "construction").set_index("path")
    assert {path: grouped.loc[path, "run.construction"] for path in truth} == \
        {path: record["construction"] for path, record in truth.items()}
    assert "run.construction" in with_constructions(runs, "method, construction")
    assert with_constructions(runs, "method") is runs


def test_the_report_grouped_by_construction_compares_every_construction_with_the_deep_ensemble(study, tmp_path):
    truth, _, _ = study
    report = write_report(list(truth), tmp_path / "report", sharpness="hessian/trace", group_by="construction",
                          formats=("png",))
    summary = pd.read_csv(tmp_path / "report" / "tables" / "summary.csv")
    assert set(summary["construction"]) == set(CONSTRUCTIONS)
    counts = summary[summary["quantity"] == "ensemble accuracy ID (%)"].set_index("construction")["count"]
    assert all(counts[label] == len(seed_sets) for label, (_, seed_sets) in CONSTRUCTIONS.items())
    severity = (tmp_path / "report" / "tables" / "severity-ensemble.md").read_text()
    assert "in brackets the difference to construction = deep ensemble" in severity
    # the difference in brackets is to the deep ensembles' mean accuracy on clean data
    table = pd.read_csv(tmp_path / "report" / "tables" / "severity-ensemble.csv")
    clean = table[table["quantity"] == "ID"].set_index("construction")
    deep = np.mean([100 * r["slices"][None][1]["accuracy"] for r in truth.values() if r["construction"] == DEEP])
    spawned = np.mean([100 * r["slices"][None][1]["accuracy"] for r in truth.values()
                       if r["construction"] == "spawned at epoch 2"])
    assert clean.loc["spawned at epoch 2", "difference_to_deep ensemble"] == pytest.approx(spawned - deep, rel=1e-9)
    assert report.notes  # the study measures no sharpness: named, not fatal
    # an explicit baseline still wins
    write_report(list(truth), tmp_path / "other", sharpness="hessian/trace", group_by="construction",
                 baseline="spawned at epoch 2", formats=("png",))
    assert "difference to construction = spawned at epoch 2" in \
        (tmp_path / "other" / "tables" / "severity-ensemble.md").read_text()
