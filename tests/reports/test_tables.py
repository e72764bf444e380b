"""The report's tables (reports.tables): summary, severity and corruption tables worked out by hand
from fixture rows, the baseline, and the quickstart summary."""
import math
import statistics

import numpy as np
import pandas as pd
import pytest

from ensembles.runs import run_folder
from reports.collect import collect, comparable_grouping, run_table
from reports.tables import corruption_table, severity_table, summary_table

import results_fixtures as fixtures


# ----------------------------------------------------------------------------------------------
# tables of hand-made rows


def test_summary_table_numbers_by_hand(small_study):
    paths, table, results = small_study
    summary = summary_table(results, table, group_by="method")
    assert list(summary.mean.index) == ["sam", "sgd"]
    assert list(summary.runs) == [1, 2]
    member_a, member_b = (80 + 85 + 90) / 3, (70 + 70 + 76) / 3
    assert summary.mean.loc["sgd", "member accuracy ID (%)"] == pytest.approx((member_a + member_b) / 2)
    assert summary.std.loc["sgd", "member accuracy ID (%)"] == pytest.approx(statistics.stdev([member_a, member_b]))
    assert summary.mean.loc["sgd", "ensemble accuracy ID (%)"] == pytest.approx((90 + 80) / 2)
    ood_a = (75 + 62 + 55 + 50) / 4
    ood_b = (65 + 52 + 45 + 40) / 4
    assert summary.mean.loc["sgd", "ensemble accuracy OOD (%)"] == pytest.approx((ood_a + ood_b) / 2)
    assert summary.mean.loc["sam", "ensemble accuracy OOD (%)"] == pytest.approx((85 + 61) / 2)
    assert summary.mean.loc["sam", "ensemble accuracy ID (%)"] == pytest.approx(93)  # not the logits row
    assert summary.mean.loc["sgd", "EIR ID"] == pytest.approx((0.30 + 0.10) / 2)
    assert summary.mean.loc["sam", "EIR ID"] == pytest.approx(0.50)
    assert summary.mean.loc["sgd", "DER OOD"] == pytest.approx((0.40 + 0.20) / 2)
    # ECE: only run a has it, and its newer measurement (n_bins 10) counts
    assert summary.mean.loc["sgd", "ECE ID"] == pytest.approx(0.04)
    assert summary.count.loc["sgd", "ECE ID"] == 1 and summary.count.loc["sam", "ECE ID"] == 0
    sharpness = "sharpness sharpness/worst/l2/adaptive@0.5"
    assert summary.mean.loc["sgd", sharpness] == pytest.approx(2.0)
    assert summary.count.loc["sgd", sharpness] == 1
    # quantities no run has are left out
    assert "KL ID" not in summary.mean.columns and "NLL OOD" not in summary.mean.columns
    text = summary.text()
    assert text.loc["sgd", "ensemble accuracy ID (%)"] == "85.00 ± 7.07"
    assert text.loc["sgd", "ECE ID"] == "0.04 [n=1]"
    assert text.loc["sam", "ECE ID"] == "—"
    numbers = summary.numbers()
    row = numbers[(numbers["method"] == "sgd") & (numbers["quantity"] == "EIR ID")].iloc[0]
    assert (row["mean"], row["count"]) == (pytest.approx(0.2), 2)


def test_severity_table_layout_and_differences_by_hand(small_study):
    paths, table, results = small_study
    severity = severity_table(results, table, group_by="method", baseline="sgd")
    assert list(severity.mean.columns) == ["ID", "1", "2", "OOD"]
    assert list(severity.mean.index) == ["sam", "sgd"]
    sgd_1 = ((75 + 55) / 2 + (65 + 45) / 2) / 2
    sgd_2 = ((62 + 50) / 2 + (52 + 40) / 2) / 2
    assert severity.mean.loc["sgd", "1"] == pytest.approx(sgd_1)
    assert severity.mean.loc["sgd", "2"] == pytest.approx(sgd_2)
    assert severity.mean.loc["sam", "1"] == pytest.approx((85 + 61) / 2)
    assert np.isnan(severity.mean.loc["sam", "2"]) and severity.count.loc["sam", "2"] == 0
    assert severity.difference.loc["sam", "1"] == pytest.approx((85 + 61) / 2 - sgd_1)
    assert severity.difference.loc["sam", "ID"] == pytest.approx(93 - 85)
    text = severity.text()
    assert text.loc["sam", "ID"] == "93.00 (+8.00)"
    assert text.loc["sgd", "1"] == f"{sgd_1:.2f} ± {statistics.stdev([65.0, 55.0]):.2f}"
    members = severity_table(results, table, group_by="method", of="members")
    assert members.baseline == "sgd"  # sgd by default, though "sam" comes first
    assert members.mean.loc["sgd", "2"] == pytest.approx(((60 + 40) / 2 + (50 + 30) / 2) / 2)


def severity_study(root, methods):
    """One run per method; methods named in ``evaluated`` get clean and corrupted accuracy rows,
    the others (an imported ensemble) none."""
    paths = []
    for method, evaluated in methods:
        path = fixtures.make_run(root / method, method=method)
        if evaluated:
            fixtures.clean_and_corrupted(path, members=[0.7, 0.7, 0.7], ensemble=0.75, eir=0.1, der=0.2,
                                corrupted={("fog", 1): ([0.6] * 3, 0.65)})
        paths.append(path)
    return run_table(paths), collect(paths)


def test_default_baseline_is_sgd_else_the_first_group_with_data(tmp_path):
    table, results = severity_study(tmp_path / "with-sgd", [("imported", False), ("sam", True), ("sgd", True)])
    severity = severity_table(results, table)
    assert severity.baseline == "sgd"
    assert severity.difference.loc["sam", "ID"] == pytest.approx(0.0)
    # "imported" comes first but has no rows, so it cannot be the baseline
    table, results = severity_study(tmp_path / "without-sgd", [("imported", False), ("sam", True),
                                                               ("sharpbalance", True)])
    severity = severity_table(results, table)
    assert severity.baseline == "sam" and "method = sam" in severity.title
    assert np.isfinite(severity.difference.loc["sharpbalance", "1"])
    # sgd without data is passed over as well
    table, results = severity_study(tmp_path / "sgd-unevaluated", [("sam", True), ("sgd", False)])
    assert severity_table(results, table).baseline == "sam"
    # an explicit baseline still wins
    assert severity_table(results, table, baseline="sgd").baseline == "sgd"


def test_corruption_means_over_severities_never_cover_a_subset_of_them(tmp_path):
    """A run that evaluated fog at severity 1 only has no mean over fog's severities 1-3: its
    severity-1 value alone would pass for one (and lift the group's mean) without a word."""
    full, partial = fixtures.make_run(tmp_path / "full", method="sgd"), fixtures.make_run(tmp_path / "partial", method="sgd")
    for severity in (1, 2, 3):
        accuracy = 0.9 - 0.1 * severity
        run_folder.append_results(full, fixtures.evaluation_rows([accuracy] * 3, {"accuracy": accuracy},
                                                                 corruption="fog", severity=severity))
    run_folder.append_results(partial, fixtures.evaluation_rows([0.8] * 3, {"accuracy": 0.8},
                                                                corruption="fog", severity=1))
    runs = run_table([full, partial])
    numbers, text, _ = corruption_table(collect([full, partial], runs), runs, group_by="method")
    fog = numbers.set_index(["corruption", "severity"]).loc["fog"]
    assert fog.loc["1", "count"] == 2 and fog.loc["1", "mean"] == pytest.approx(80.0)
    assert fog.loc["mean", "count"] == 1 and fog.loc["mean", "mean"] == pytest.approx(70.0)
    assert text.reset_index().set_index("corruption").loc["fog", "mean"].endswith("[n=1]")
    assert math.isnan(fog.loc["mean", "std"])


# ----------------------------------------------------------------------------------------------
# groups on other data are not compared


def test_severity_differences_compare_only_groups_on_the_baselines_data(tmp_path):
    paths = [fixtures.measured_run(tmp_path / "sgd", method="sgd", accuracy=0.8),
             fixtures.measured_run(tmp_path / "sam", accuracy=0.9),
             fixtures.measured_run(tmp_path / "c100", dataset="cifar100", num_classes=100, accuracy=0.4)]
    table, group_by, _ = comparable_grouping(run_table(paths), "method")
    severity = severity_table(collect(paths, table), table, group_by=group_by)
    assert severity.baseline == "sgd (cifar10)"  # sgd is still the default baseline
    assert severity.title.endswith("(for groups on the same data only)")
    difference = severity.difference["ID"]
    # By hand: ensemble accuracy is member accuracy + 5 points: sam 95 − sgd 85 = +10 on cifar10;
    # cifar100's 45 % is not compared with cifar10's 85 %.
    assert difference["sam (cifar10)"] == pytest.approx(10.0)
    assert pd.isna(difference["sam (cifar100)"])


def test_quickstart_summary_from_run_folders(tmp_path):
    from results_fixtures import STUDY_LAWS, write_study

    from reports.tables import quickstart_summary

    lines = quickstart_summary(write_study(tmp_path))
    # sam: members' mean sharpness 0.25·2^r over r = 0, 1, 2; DER = 0.5·s^0.6 on every corrupted slice
    sam_sharpness = [0.25 * 2 ** r for r in range(3)]
    sam_der = sum(0.5 * s ** 0.6 for s in sam_sharpness) / 3
    assert lines[0] == (f"         sam: ensemble accuracy 94.5% clean, 82.0% corrupted; DER (corrupted) {sam_der:.3g}; "
                        f"sharpness {sum(sam_sharpness) / 3:.3g} (3 ensembles)")
    assert [line.split(":")[0].strip() for line in lines[:3]] == ["sam", "sgd", "sharpbalance"]
    # exact power laws: no scatter, so a zero-width t interval, but 3 ensembles cannot show that
    expected = "; ".join(f"{method} {beta:.2f} [{beta:.2f}, {beta:.2f}] (n = 3 < 5: too few ensembles to tell "
                         "a slope from noise)" for method, (scale, beta) in STUDY_LAWS.items())
    assert lines[3] == "β, slope of log DER on log sharpness [95% t interval]: " + expected


def test_quickstart_summary_says_when_beta_cannot_be_fitted(tmp_path):
    from results_fixtures import write_study

    from reports.tables import quickstart_summary

    paths = [path for path in write_study(tmp_path) if path.name.endswith(("-0", "-1"))]  # 2 ensembles per method
    lines = quickstart_summary(paths)
    assert lines[-1] == "β, slope of log DER on log sharpness [95% t interval]: not fitted (a group needs 3 ensembles)"
    assert all("(2 ensembles)" in line for line in lines[:-1])


# ----------------------------------------------------------------------------------------------
# the corruption table and the summary's notes


def test_corruption_table_shows_each_corruption_at_each_severity(study):
    _, _, runs, results = study
    numbers, text, title = corruption_table(results, runs, group_by="method", metric="accuracy")
    # write_study: ensemble accuracy = 0.92 − 0.04·severity (− 0.01 on fog) + 0.01·r + the method's offset
    sgd = numbers[(numbers["method"] == "sgd")].set_index(["corruption", "severity"])
    assert sgd.loc[("contrast", "1"), "mean"] == pytest.approx(100 * (0.92 - 0.04 + 0.01))
    assert sgd.loc[("fog", "5"), "mean"] == pytest.approx(100 * (0.92 - 0.20 - 0.01 + 0.01))
    assert sgd.loc[("fog", "mean"), "mean"] == pytest.approx(100 * (0.92 - 0.12 - 0.01 + 0.01))
    assert sgd.loc[("fog", "3"), "std"] == pytest.approx(1.0) and (sgd["count"] == 3).all()
    assert list(text.columns) == ["corruption", "1", "2", "3", "4", "5", "mean"]
    assert text.loc["sgd"].set_index("corruption").loc["fog", "1"] == "88.00 ± 1.00"
    der, der_text, der_title = corruption_table(results, runs, group_by="method", metric="der")
    scale, beta = fixtures.STUDY_LAWS["sam"]
    expected = np.mean([scale * (0.25 * 2 ** r) ** beta for r in range(3)])
    assert der[(der["method"] == "sam") & (der["severity"] == "2")]["mean"].tolist() == [pytest.approx(expected)] * 2
    assert "DER" in der_title


def test_corruption_table_is_empty_without_corrupted_rows(tmp_path):
    run = fixtures.make_run(tmp_path / "clean", method="sgd")
    run_folder.append_results(run, fixtures.evaluation_rows([0.9, 0.8, 0.85], {"accuracy": 0.9}))
    runs = run_table([run])
    numbers, _, _ = corruption_table(collect([run], runs), runs)
    assert numbers.empty


def test_summary_shows_the_hessian_trace_and_a_note_when_budgets_differ(tmp_path):
    from reports.site import write_report
    from reports.tables import summary_table

    paths = []
    for index, n_batches in enumerate((100, 100, 50)):
        path = fixtures.make_run(tmp_path / f"sam-{index}", method="sam", rho=0.05)
        rows = fixtures.evaluation_rows([0.8, 0.82, 0.81], {"accuracy": 0.85, "der": 0.3, "eir": 0.1})
        rows += [{**row, "n_batches": n_batches} for row in fixtures.sharpness_rows([0.1, 0.2, 0.3])]
        rows += [{"scope": f"member-{i}", "metric": "hessian/trace", "value": 10.0 * (index + 1), "stderr": 0.5,
                  "dataset": "cifar10", "split": "train", "n_probes": 100, "method": "hutchinson", "seed": 0}
                 for i in range(3)]
        run_folder.append_results(path, rows)
        paths.append(path)
    runs = run_table(paths)
    summary = summary_table(collect(paths, runs), runs)
    assert summary.mean.loc["sam", "Hessian trace"] == pytest.approx(20.0)
    report = write_report(paths, tmp_path / "report", formats=("png",), diversity_on="test")
    mixed = [note for note in report.notes if "different settings" in note]
    assert len(mixed) == 1 and "n_batches 100 vs 50" in mixed[0] and "sharpness/worst/l2/adaptive@0.5" in mixed[0]
