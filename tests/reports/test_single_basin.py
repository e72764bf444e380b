"""The report's section "How good is a single basin?" from fixture rows: the construction of each run
read from its run.json, the table's means with 95% t intervals (against scipy.stats) and paired
differences to the deep ensemble of the same seeds (computed by hand here), the aligned deep ensemble
built from the deep ensemble's evaluation rows and its aligned q̄, the figure with its reference lines,
and no section for a plain SGD/SAM report."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import results_fixtures as fixtures
from ensembles.runs import run_folder
from reports import single_basin
from reports.collect import collect, run_table
from reports.site import write_report
from reports.single_basin import DEEP, construction_of, single_basin_points, single_basin_tables, write_single_basin

SEEDS = ((13, 17, 27), (14, 18, 28), (15, 19, 29))
SLICES = ((None, None), ("fog", 3), ("contrast", 3))
#: construction label -> (run.json settings, the seed sets it was trained with)
CONSTRUCTIONS = {
    DEEP: ({}, SEEDS),
    "spawned at epoch 0 (shared initialization)": ({"spawn_epoch": 0}, SEEDS[:2]),
    "spawned at epoch 2": ({"spawn_epoch": 2}, SEEDS),
    "constrained, λ = 0.5": ({"connect_strength": 0.5}, SEEDS),
    "distilled (member-wise, w = 0.5, τ = 2)": ({"distill_from": "../deep-0", "distill_target": "member",
                                                 "distill_weight": 0.5, "distill_temperature": 2.0},
                                                SEEDS + ((99, 98, 97),)),
}
ALIGNED = "deep ensemble aligned to member 0 (weight matching)"


def q_bar_row(value, alignment=None):
    aligned = {} if alignment is None else {"alignment": alignment, "aligned_to": 0, "align_seed": 0}
    return {"scope": "ensemble", "metric": "connectivity/q_bar", "value": value, "stderr": 0.01, "aggregate": "mean",
            "dataset": "cifar10", "split": "test", "bn_mode": "none", "alphas": 21, "n_examples": 100, **aligned}


def write_runs(root, rng, constructions=CONSTRUCTIONS, aligned_q=True):
    """Run folders of every construction with random evaluation and q̄ rows; returns the truth per
    run: construction, seeds and every number written (ensemble and member accuracies per slice ...)."""
    truth = {}
    for index, (label, (settings, seed_sets)) in enumerate(constructions.items()):
        for number, seeds in enumerate(seed_sets):
            name = "deep" if label == DEEP else f"c{index}"
            path = fixtures.make_run(root / f"{name}-{number}", method="sgd", seeds=seeds, **settings)
            record = {"construction": label, "seeds": seeds, "slices": {}, "q": rng.uniform(0.1, 0.9)}
            rows = [q_bar_row(record["q"])]
            for corruption, severity in SLICES:
                members = list(rng.uniform(0.6, 0.8, size=3))
                ensemble = {"accuracy": rng.uniform(0.75, 0.9), "nll": rng.uniform(0.3, 0.6),
                            "ece": rng.uniform(0.01, 0.05), "der": rng.uniform(0.5, 1.5), "eir": rng.uniform(0, 0.3)}
                record["slices"][corruption] = (members, ensemble)
                rows += fixtures.evaluation_rows(members, ensemble, corruption=corruption, severity=severity)
            if label == DEEP and number < 2 and aligned_q:  # two of the deep ensembles also aligned
                record["aligned q"] = rng.uniform(0.9, 1.0)
                rows.append(q_bar_row(record["aligned q"], "weight"))
            run_folder.append_results(path, rows)
            truth[str(path)] = record
    return truth


def quantity(record, name):
    """A quantity of the table, computed from what was written."""
    clean_members, clean = record["slices"][None]
    corrupted = [record["slices"][c] for c in ("fog", "contrast")]
    if name == "q̄":
        return record["q"]
    if name.startswith("gain"):
        members, ensemble = (([clean_members], [clean]) if "ID" in name else
                             ([m for m, _ in corrupted], [e for _, e in corrupted]))
        return 100 * (np.mean([e["accuracy"] for e in ensemble]) - np.mean([np.mean(m) for m in members]))
    metric = {"accuracy": "accuracy", "NLL": "nll", "ECE": "ece", "DER": "der", "EIR": "eir"}[name.split()[0]]
    value = clean[metric] if " ID" in name else np.mean([e[metric] for _, e in corrupted])
    return 100 * value if metric == "accuracy" else value


@pytest.fixture
def study(tmp_path):
    truth = write_runs(tmp_path / "runs", np.random.default_rng(0))
    runs = run_table(list(truth))
    return truth, runs, collect(runs["path"], runs)


def test_constructions_are_read_from_run_json_settings():
    assert construction_of({}).label == DEEP
    assert construction_of({"run.spawn_epoch": float("nan"), "run.distill_from": None}).label == DEEP
    assert construction_of({"spawn_epoch": 0}).label == "spawned at epoch 0 (shared initialization)"
    assert construction_of({"run.spawn_epoch": 5.0}).label == "spawned at epoch 5"
    assert construction_of({"connect_strength": 0}).label == "constrained, λ = 0"
    assert construction_of({"distill_from": "t", "distill_target": "ensemble", "distill_weight": 0.3,
                            "distill_temperature": 4}).label == "distilled (from the ensemble, w = 0.3, τ = 4)"
    assert construction_of({"spawn_epoch": 3, "distill_from": "t", "distill_target": "member"}).label == \
        "spawned at epoch 3 + distilled (member-wise)"
    order = sorted([construction_of(s) for s in ({"distill_from": "t"}, {"connect_strength": 1}, {"spawn_epoch": 4},
                                                 {"spawn_epoch": 1}, {"connect_strength": 0.1}, {})],
                   key=lambda c: c.order)
    assert [c.label for c in order] == [DEEP, "spawned at epoch 1", "spawned at epoch 4", "constrained, λ = 0.1",
                                        "constrained, λ = 1", "distilled (member-wise)"]


def test_means_and_t_intervals_per_construction_equal_hand_computations(study):
    truth, runs, results = study
    numbers, means, _, _ = single_basin_tables(single_basin_points(results, runs))
    expected_order = [DEEP, ALIGNED, *list(CONSTRUCTIONS)[1:]]
    assert list(means.index) == expected_order
    assert set(numbers["quantity"]) == set(single_basin.QUANTITIES)
    for label in CONSTRUCTIONS:
        records = [record for record in truth.values() if record["construction"] == label]
        for name in single_basin.QUANTITIES:
            values = np.array([quantity(record, name) for record in records])
            row = numbers[(numbers["construction"] == label) & (numbers["quantity"] == name)].iloc[0]
            low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
            assert (row["ensembles"], row["n"]) == (len(records), len(records))
            assert row["mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
    # a cell of the Markdown/LaTeX text: mean [interval] in percent with two decimals
    row = numbers[(numbers["construction"] == "spawned at epoch 2")
                  & (numbers["quantity"] == "accuracy ID (%)")].iloc[0]
    assert means.loc["spawned at epoch 2", "accuracy ID (%)"] == \
        f"{row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    assert means.loc["distilled (member-wise, w = 0.5, τ = 2)", "ensembles"] == "4"


def test_paired_differences_to_the_deep_ensemble_of_the_same_seeds(study):
    truth, runs, results = study
    numbers, _, differences, notes = single_basin_tables(single_basin_points(results, runs))
    deep = {record["seeds"]: record for record in truth.values() if record["construction"] == DEEP}
    for label in list(CONSTRUCTIONS)[1:]:
        records = [record for record in truth.values() if record["construction"] == label and record["seeds"] in deep]
        for name in single_basin.QUANTITIES:
            d = np.array([quantity(record, name) - quantity(deep[record["seeds"]], name) for record in records])
            row = numbers[(numbers["construction"] == label) & (numbers["quantity"] == name)].iloc[0]
            low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
            assert row["pairs"] == len(d)
            assert row["difference"] == pytest.approx(d.mean(), rel=1e-10, abs=1e-13)
            assert (row["difference_low"], row["difference_high"]) == (pytest.approx(low, rel=1e-9),
                                                                       pytest.approx(high, rel=1e-9))
    assert differences.loc[DEEP, "pairs"] == "reference" and (differences.loc[DEEP].iloc[1:] == "—").all()
    assert differences.loc["distilled (member-wise, w = 0.5, τ = 2)", "pairs"] == "3"  # 99,98,97 has no partner
    assert any("no deep ensemble of the same seeds" in note and "c4-3" in note for note in notes)
    spawned = numbers[(numbers["construction"] == "spawned at epoch 0 (shared initialization)")]
    assert set(spawned["pairs"]) == {2}


def test_the_aligned_deep_ensemble_has_the_deep_ensembles_predictions_and_its_aligned_q(study):
    truth, runs, results = study
    points = single_basin_points(results, runs)
    aligned = points[points["construction"] == ALIGNED].set_index("path")
    with_alignment = {path: record for path, record in truth.items() if "aligned q" in record}
    assert set(aligned.index) == set(with_alignment)
    deep = points[points["construction"] == DEEP].set_index("path")
    for path, record in with_alignment.items():
        assert aligned.loc[path, "q̄"] == record["aligned q"]
        for name in single_basin.QUANTITIES:
            if name != "q̄":
                assert aligned.loc[path, name] == deep.loc[path, name]
    numbers, _, _, _ = single_basin_tables(points)
    mine = numbers[numbers["construction"] == ALIGNED].set_index("quantity")
    assert (mine.drop(index="q̄")["difference"] == 0).all()
    shift = np.array([record["aligned q"] - record["q"] for record in with_alignment.values()])
    assert mine.loc["q̄", "difference"] == pytest.approx(shift.mean(), rel=1e-12)


def test_the_figure_has_one_marker_per_ensemble_and_the_deep_ensembles_reference_lines(study, tmp_path):
    truth, runs, results = study
    points = single_basin_points(results, runs)
    figures = single_basin.plot_single_basin(points, tmp_path / "figures")
    assert sorted(path.name for path in figures.paths) == ["single-basin.png", "single-basin.svg"]
    assert all(path.stat().st_size > 1000 for path in figures.paths)
    axis = figures.figures[0].axes[0]
    drawn = {collection.get_label(): collection.get_offsets() for collection in axis.collections}
    for label in [*CONSTRUCTIONS, ALIGNED]:
        mine = points[points["construction"] == label]
        np.testing.assert_array_equal(np.asarray(drawn[label]), mine[["q̄", "accuracy ID (%)"]].to_numpy())
    deep = [record for record in truth.values() if record["construction"] == DEEP]
    lines = {line.get_linestyle(): line.get_ydata()[0] for line in axis.lines if line.get_linestyle() != "-"}
    joined = [line.get_xydata() for line in axis.lines if line.get_linestyle() == "-"]
    assert sorted(tuple(segment[:, 0]) for segment in joined) == \
        sorted(tuple(sorted((record["q"], record["aligned q"]))) for record in truth.values() if "aligned q" in record)
    assert lines["--"] == pytest.approx(np.mean([100 * r["slices"][None][1]["accuracy"] for r in deep]), rel=1e-12)
    assert lines[":"] == pytest.approx(np.mean([100 * np.mean(r["slices"][None][0]) for r in deep]), rel=1e-12)


def test_the_report_holds_the_section_with_its_tables_and_figure(study, tmp_path):
    truth, runs, results = study
    report = write_report(list(truth), tmp_path / "report", sharpness="hessian/trace")
    names = {path.name for path in report.tables + report.figures}
    assert {"single-basin.csv", "single-basin.md", "single-basin.tex", "single-basin-runs.csv",
            "single-basin-difference.csv", "single-basin-difference.md", "single-basin-difference.tex",
            "single-basin.png", "single-basin.svg"} <= names
    assert all(path.is_file() for path in report.tables + report.figures)
    index = (tmp_path / "report" / "index.html").read_text()
    assert "How good is a single basin?" in index and "figures/single-basin.png" in index
    readme = (tmp_path / "report" / "README.md").read_text()  # the report's question, then the section answering it
    assert "**How good is a single basin?**" in readme and "## Connectivity and accuracy by construction" in readme
    stored = pd.read_csv(tmp_path / "report" / "tables" / "single-basin.csv")
    computed, _, _, _ = single_basin_tables(single_basin_points(results, runs))
    pd.testing.assert_frame_equal(stored, computed, check_dtype=False)
    table = (tmp_path / "report" / "tables" / "single-basin.md").read_text()
    assert "reconstruction of Lion et al. 2024's q_pair" in table


def test_no_section_for_a_plain_sgd_and_sam_report(tmp_path):
    paths = fixtures.write_study(tmp_path / "runs")
    report = write_report(paths, tmp_path / "report", formats=("png",))
    assert not any(path.name.startswith("single-basin") for path in report.tables + report.figures)
    assert not list((tmp_path / "report").rglob("single-basin*"))
    assert "single basin" not in (tmp_path / "report" / "index.html").read_text().lower()
    assert not any("single basin" in note for note in report.notes)


def test_deep_ensembles_with_aligned_rows_alone_make_the_section(tmp_path):
    truth = write_runs(tmp_path / "runs", np.random.default_rng(1), constructions={DEEP: ({}, SEEDS)})
    report = write_report(list(truth), tmp_path / "report", sharpness="hessian/trace", formats=("png",))
    assert any(path.name == "single-basin.md" for path in report.tables)
    text = (tmp_path / "report" / "tables" / "single-basin.md").read_text()
    assert ALIGNED in text and DEEP in text
    # without the aligned rows the same deep ensembles are a plain report
    plain = write_runs(tmp_path / "plain", np.random.default_rng(1), constructions={DEEP: ({}, SEEDS)},
                       aligned_q=False)
    runs = run_table(list(plain))
    section = write_single_basin(collect(runs["path"], runs), runs, tmp_path / "tables", tmp_path / "figures")
    assert not section.written and section.notes == () and not (tmp_path / "tables").exists()


def test_a_run_without_q_is_named_with_the_command_and_left_out_of_the_figure(tmp_path):
    truth = write_runs(tmp_path / "runs", np.random.default_rng(2),
                       constructions={DEEP: ({}, SEEDS[:2]), "spawned at epoch 2": ({"spawn_epoch": 2}, SEEDS[:2])})
    lacking = next(path for path, record in truth.items() if record["construction"] == "spawned at epoch 2")
    run_folder.append_results(lacking, [q_bar_row(math.nan)])  # the newest q̄ is NaN: it counts as none
    runs = run_table(list(truth))
    results = collect(runs["path"], runs)
    section = write_single_basin(results, runs, tmp_path / "tables", tmp_path / "figures")
    assert any("has no q̄" in note and f"sharpdiv connectivity {lacking}" in note for note in section.notes)
    points = single_basin_points(results, runs)
    figure = single_basin.plot_single_basin(points, tmp_path / "figures")
    offsets = {c.get_label(): len(c.get_offsets()) for c in figure.figures[0].axes[0].collections}
    assert offsets["spawned at epoch 2"] == 1


def test_runs_on_other_data_or_methods_are_never_paired(tmp_path):
    truth = write_runs(tmp_path / "runs", np.random.default_rng(3),
                       constructions={DEEP: ({}, SEEDS[:2]), "spawned at epoch 2": ({"spawn_epoch": 2}, SEEDS[:2])})
    sam = fixtures.make_run(tmp_path / "runs" / "sam-spawned", method="sam", rho=0.05, seeds=SEEDS[0], spawn_epoch=2)
    run_folder.append_results(sam, fixtures.evaluation_rows([0.7, 0.7, 0.7], {"accuracy": 0.8}) + [q_bar_row(0.9)])
    runs = run_table([*truth, str(sam)])
    points = single_basin_points(collect(runs["path"], runs), runs)
    numbers, means, _, notes = single_basin_tables(points)
    assert "spawned at epoch 2 (sam, ρ = 0.05)" in means.index and "spawned at epoch 2 (sgd)" in means.index
    row = numbers[(numbers["construction"] == "spawned at epoch 2 (sam, ρ = 0.05)") & (numbers["quantity"] == "q̄")]
    assert row["pairs"].item() == 0  # no SAM deep ensemble: no difference to an SGD one
