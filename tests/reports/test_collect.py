"""Collecting rows into run tables (reports.collect): settings joined with a prefix, stale rows left
out, one measurement per run (never a mix of settings, splits or ascents), NaN members named,
groups split where datasets or class counts differ, and the notes on unequal budgets."""
import math

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
from cli import main
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from landscape.errors import InputError
from reports.collect import (SharpnessSpec, barriers_per_run, collect, missing_measurements, per_run, run_table,
                             sharpness_per_run)
from reports.site import write_report
from reports.tables import severity_table, summary_table

import results_fixtures as fixtures
from measured_runs import make_run


# ----------------------------------------------------------------------------------------------
# collecting hand-made rows


def test_collect_joins_run_settings_with_a_prefix(small_study):
    paths, table, results = small_study
    assert list(table["path"]) == [str(p) for p in paths]
    assert list(table["run_label"]) == ["a", "b", "c"]
    first = results[results["path"] == str(paths[0])].iloc[0]
    assert first["run.method"] == "sgd" and first["run.width"] == 8 and first["run.seeds"] == "13,17,27"
    assert first["run.dataset"] == "cifar10" and first["run.model"] == "mlp" and first["run.n_members"] == 3
    sam = results[(results["path"] == str(paths[2])) & (results["metric"] == fixtures.SHARPNESS_METRIC)]
    # the training radius (run.rho) and the sharpness radius (rho) stay apart
    assert set(sam["run.rho"]) == {0.2} and set(sam["rho"]) == {0.5, 0.25}
    assert set(sam["run.sparsity"]) == {0.5}


def test_collect_leaves_out_stale_rows(tmp_path):
    path = fixtures.make_run(tmp_path / "run")
    run_folder.append_results(path, [{"scope": f"member-{i}", "metric": "accuracy", "value": 0.5 + i / 10,
                                **fixtures.slice_columns()} for i in range(2)])
    run_folder.save_member(path, 0, build("mlp", 3, input_size=4, hidden=[2]))  # new weights for member 0
    results = collect([path])
    assert list(results["scope"]) == ["member-1"] and list(results["value"]) == [0.6]


def test_sharpness_uses_the_mean_row_or_else_the_members_at_the_chosen_radius(small_study):
    paths, _, results = small_study
    values = sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5"))
    assert values[str(paths[0])] == pytest.approx((1.0 + 2.0 + 3.0) / 3)
    assert values[str(paths[2])] == pytest.approx(2.5)
    assert str(paths[1]) not in values.index
    assert sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.25"))[str(paths[2])] == 9.0


def test_grouping_by_a_field_some_runs_lack(small_study):
    _, table, results = small_study
    by_sparsity = summary_table(results, table, group_by="sparsity")
    assert list(by_sparsity.mean.index) == ["0.5", "(unset)"]
    assert list(by_sparsity.runs) == [1, 2]
    with pytest.raises(InputError, match="no run has the field 'depth'.*method"):
        summary_table(results, table, group_by="depth")
    with pytest.raises(InputError, match="--baseline 'adam'.*sam, sgd"):
        severity_table(results, table, baseline="adam")


def test_curvature_metrics_parse_without_a_radius():
    assert SharpnessSpec.parse("hessian/trace") == SharpnessSpec("hessian/trace", None)
    assert SharpnessSpec.parse("fisher/q90") == SharpnessSpec("fisher/q90", None)
    assert SharpnessSpec.parse(" sharpness-error/average/linf/standard @ 0.1") == \
        SharpnessSpec("sharpness-error/average/linf/standard", 0.1)
    for text in ("bogus", "", "@0.5", "hessian/density", "fisher"):
        with pytest.raises(InputError, match="expected sharpness/<worst|average>"):
            SharpnessSpec.parse(text)


_TINY = ["--batch-size", "4", "--n-batches", "3", "--seed", "5", "--n-iters", "2", "--rho", "0.5", "--device", "cpu"]


def test_rows_without_an_ascent_setting_read_as_apgd(tmp_path):
    path = make_run(tmp_path / "old")
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY])  # rows exactly as before the setting
    assert result.exit_code == 0, result.output
    results = collect([path])
    assert "ascent" not in results.columns
    assert sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5")).notna().all()
    assert sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5:reference")).empty
    spec = SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5:reference")
    assert str(spec).endswith(":reference") and "--ascent reference" in spec.command("runs/x")


def test_spec_refuses_an_ascent_it_cannot_have():
    for text in ("sharpness/average/l2/adaptive@0.5:reference", "sharpness/worst/l2/adaptive@0.5:fast",
                 "hessian/trace:reference"):
        with pytest.raises(InputError):
            SharpnessSpec.parse(text)


# ----------------------------------------------------------------------------------------------
# NaN members, and one measurement per run


SPEC = SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5")


def report_inputs(tmp_path, member_values, with_mean_row):
    path = fixtures.make_run(tmp_path / "run")
    rows = fixtures.sharpness_rows(member_values, with_mean_row=with_mean_row)
    rows += fixtures.evaluation_rows([0.8, math.nan, 0.6], {"accuracy": 0.85, "der": 0.3})
    run_folder.append_results(path, rows)
    table = run_table([path])
    return str(path), table, collect([path], table)


@pytest.mark.parametrize("member_values, with_mean_row", [
    ([1.0, math.nan, 3.0], False),  # a NaN member: the mean of 1 and 3 is not the run's value
    ([1.0, math.nan, 3.0], True),   # ... nor when the stored mean row is NaN
    ([1.0, 3.0], False),            # a member without any row (the run lists three)
])
def test_a_run_with_a_member_lacking_the_value_is_nan_and_named(tmp_path, member_values, with_mean_row):
    path, table, results = report_inputs(tmp_path, member_values, with_mean_row)
    assert math.isnan(sharpness_per_run(results, SPEC)[path])
    notes = [str(note) for note in missing_measurements(results, table, sharpness=SPEC, on="test")]
    assert any("sharpness/worst/l2/adaptive@0.5 for every member" in note and path in note for note in notes), notes


def test_a_one_member_run_is_not_asked_for_diversity_but_an_ensemble_is(tmp_path):
    """A model of a zoo has no ensemble to be diverse: no command would store its DER."""
    single = fixtures.make_run(tmp_path / "single", seeds=(13,))
    ensemble = fixtures.make_run(tmp_path / "ensemble")
    run_folder.append_results(single, fixtures.evaluation_rows([0.8], {"accuracy": 0.8}))
    run_folder.append_results(ensemble, fixtures.evaluation_rows([0.8, 0.7, 0.6], {"accuracy": 0.85}))
    table = run_table([single, ensemble])
    notes = [str(note) for note in missing_measurements(collect([single, ensemble], table), table, sharpness=SPEC,
                                                        on="test")]
    assert [note for note in notes if "der on" in note] == [
        f"run {ensemble} has no der on clean test data: run `sharpdiv evaluate {ensemble}`"]


def test_member_accuracy_with_a_nan_member_is_nan_not_the_others_mean(tmp_path):
    path, table, results = report_inputs(tmp_path, [1.0, 2.0, 3.0], True)
    assert math.isnan(per_run(results, "accuracy", scope="members", on="test")[path])
    assert per_run(results, "accuracy", on="test")[path] == pytest.approx(0.85)  # the ensemble row is whole
    assert sharpness_per_run(results, SPEC)[path] == pytest.approx(2.0)  # complete members: a number


def test_reports_read_an_asam_run_from_before_asam_scale_as_scaling_every_parameter(tmp_path):
    """An ASAM run recorded before the setting existed scaled all parameters: grouped by
    asam_scale it belongs with "all", never in an "(unset)" group beside the official rule's runs."""
    old = fixtures.make_run(tmp_path / "old", method="asam", rho=0.5)
    new = fixtures.make_run(tmp_path / "new", method="asam", rho=0.5, asam_scale="weights")
    sgd = fixtures.make_run(tmp_path / "sgd", method="sgd")
    scales = run_table([old, new, sgd]).set_index("run_label")["run.asam_scale"]
    assert scales["old"] == "all" and scales["new"] == "weights"
    assert scales.isna()["sgd"] or scales["sgd"] in ("", "None")


def test_a_runs_sharpness_is_one_measurements_never_a_mean_over_the_splits_it_was_measured_on(tmp_path):
    """Sharpness measured on the training split and, later, on the test split are two numbers of
    two data sets: the report reads the newest, never their mean, and says when the runs of one
    group were measured on different splits."""
    from reports.collect import SharpnessSpec, mixed_settings, sharpness_per_run

    spec = SharpnessSpec.parse(fixtures.SHARPNESS_METRIC + "@0.5")
    both, test_only = fixtures.make_run(tmp_path / "both", method="sgd"), fixtures.make_run(tmp_path / "test", method="sgd")
    run_folder.append_results(both, fixtures.sharpness_rows([1.0, 1.0, 1.0]))
    on_test = [{**row, "split": "test"} for row in fixtures.sharpness_rows([3.0, 3.0, 3.0])]
    run_folder.append_results(both, on_test)
    run_folder.append_results(test_only, fixtures.sharpness_rows([2.0, 2.0, 2.0]))
    runs = run_table([both, test_only])
    results = collect([both, test_only], runs)
    values = sharpness_per_run(results, spec)
    assert values[str(both)] == pytest.approx(3.0) and values[str(test_only)] == pytest.approx(2.0)
    notes = mixed_settings(results, runs.set_index("path")["run.method"], spec)
    assert len(notes) == 1 and "split" in notes[0] and "train vs test" in notes[0].replace("test vs train", "train vs test")


def test_a_run_evaluated_on_fewer_corruptions_than_the_others_gets_a_note(tmp_path):
    """Its OOD mean is over a subset of the slices the others average, so it is another quantity:
    the report says so instead of comparing the two silently."""
    from reports.collect import partial_corruptions

    full, partial = fixtures.make_run(tmp_path / "full", method="sgd"), fixtures.make_run(tmp_path / "partial", method="sam")
    for corruption in ("fog", "contrast"):
        run_folder.append_results(full, fixtures.evaluation_rows([0.5] * 3, {"accuracy": 0.5},
                                                                 corruption=corruption, severity=1))
    run_folder.append_results(partial, fixtures.evaluation_rows([0.5] * 3, {"accuracy": 0.5},
                                                                corruption="fog", severity=1))
    runs = run_table([full, partial])
    notes = partial_corruptions(collect([full, partial], runs), runs)
    assert len(notes) == 1 and "partial" in notes[0] and "1 of the 2" in notes[0]
    runs = run_table([full])
    assert partial_corruptions(collect([full], runs), runs) == []


def test_runs_measured_alike_get_no_budget_note_although_they_hold_member_and_mean_rows(tmp_path):
    """The ensemble-mean row (aggregate=mean) beside the member rows is one measurement, not two
    budgets: a group whose runs used the same settings gets no 'different settings' note."""
    from reports.collect import SharpnessSpec, mixed_settings

    spec = SharpnessSpec.parse(fixtures.SHARPNESS_METRIC + "@0.5")
    paths = [fixtures.make_run(tmp_path / f"sam-{i}", method="sam") for i in range(2)]
    for path in paths:
        run_folder.append_results(path, fixtures.sharpness_rows([1.0, 2.0, 3.0], with_mean_row=True))
    runs = run_table(paths)
    assert mixed_settings(collect(paths, runs), runs.set_index("path")["run.method"], spec) == []


# ----------------------------------------------------------------------------------------------
# runs on different data are never pooled


def test_report_splits_groups_that_mix_datasets(tmp_path):
    paths = [fixtures.measured_run(tmp_path / "c10-a", accuracy=0.9),
             fixtures.measured_run(tmp_path / "c10-b", accuracy=0.8),
             fixtures.measured_run(tmp_path / "c100", dataset="cifar100", num_classes=100, accuracy=0.4)]
    out = tmp_path / "report"
    result = CliRunner().invoke(cli.main, ["report", *map(str, paths), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "the runs span 2 datasets (cifar10, cifar100): each method group is split by dataset" in result.stderr
    summary = pd.read_csv(out / "tables" / "summary.csv")
    column = summary.columns[0]
    assert column == "method, dataset"
    member = summary[summary["quantity"] == "member accuracy ID (%)"].set_index(column)["mean"]
    # By hand: cifar10 runs 90 % and 80 % -> 85 %; cifar100 alone 40 %; never (90 + 80 + 40) / 3.
    assert member.to_dict() == pytest.approx({"sam (cifar10)": 85.0, "sam (cifar100)": 40.0})


def test_one_dataset_keeps_plain_groups_and_class_counts_split_a_dataset(tmp_path):
    paths = [fixtures.measured_run(tmp_path / "a"), fixtures.measured_run(tmp_path / "b", method="sgd")]
    report = write_report(paths, tmp_path / "plain", formats=("png",))
    assert not any("span" in note for note in report.notes)
    assert pd.read_csv(tmp_path / "plain" / "tables" / "summary.csv").columns[0] == "method"
    odd = fixtures.measured_run(tmp_path / "c", num_classes=5, accuracy=0.3)  # same dataset name, other classes
    report = write_report([*paths, odd], tmp_path / "split", formats=("png",))
    assert any("2 class counts (10, 5)" in note for note in report.notes)
    groups = set(pd.read_csv(tmp_path / "split" / "tables" / "summary.csv")["method, num_classes"])
    assert groups == {"sam (10 classes)", "sgd (10 classes)", "sam (5 classes)"}


def test_report_groups_by_a_comma_list_of_fields(tmp_path):
    paths = fixtures.write_two_methods(tmp_path / "runs")
    result = CliRunner().invoke(cli.main, ["report", *map(str, paths), "--out", str(tmp_path / "out"),
                                           "--group-by", "method,rho"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert set(summary["method,rho"]) == {"method=sgd rho=(unset)", "method=sam rho=0.05", "method=sam rho=0.1"}
    for path in paths:  # the report reads run folders; it never writes a group label into them
        assert "sweep_group" not in run_folder.read_config(path)


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
    assert barriers_per_run(_barrier_rows(test))["none"]["R"] == 2.0
    # the same pair on another split (same settings) later: not averaged in with the test split's pairs
    on_val = test + [((0, 1), 100.0, "val", "A", 4)]
    assert barriers_per_run(_barrier_rows(on_val))["none"]["R"] == 2.0
    # one pair re-measured with other settings (an interrupted call): the complete measurement counts
    mixed = test + [((0, 1), 50.0, "test", "B", 5)]
    assert barriers_per_run(_barrier_rows(mixed))["none"]["R"] == 2.0
    # a pair missing (a member added since, or an interrupted first call): no mean over some pairs
    assert np.isnan(barriers_per_run(_barrier_rows(test[:2]))["none"]["R"])


def test_member_mean_is_never_a_mix_of_settings():
    """Without an ensemble row the report averages member rows: they must all be of one measurement.
    Member 0 re-measured with other settings (a call interrupted after it) leaves member 1 at the
    old ones; the mean of the two is no measurement at all."""
    def row(member, value, settings, created):
        return {"path": "R", "scope": f"member-{member}", "metric": "sharpness/worst/l2/adaptive", "value": value,
                "stderr": np.nan, "dataset": "digits", "split": "train", "corruption": None, "severity": None,
                "settings": settings, "rho": 0.5, "created": f"2024-01-01T00:00:{created:02d}", "run.n_members": 2}
    spec = SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5")
    same = pd.DataFrame([row(0, 1.0, "A", 1), row(1, 3.0, "A", 2)])
    assert sharpness_per_run(same, spec)["R"] == 2.0
    mixed = pd.DataFrame([row(0, 1.0, "A", 1), row(1, 3.0, "A", 2), row(0, 10.0, "B", 3)])
    assert np.isnan(sharpness_per_run(mixed, spec)["R"])
