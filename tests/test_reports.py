"""Reports: β recovers known power laws with honest intervals; tables hold the numbers worked out by
hand from fixture rows; every figure renders with the right axes; index.html links every file it
wrote; ``sharpdiv report`` runs end to end and names the command for what a run lacks."""
from __future__ import annotations

import statistics
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st
from scipy import stats

import cli
import results_fixtures as fixtures
from ensembles.runs import run_folder
from ensembles.models.zoo import build
from landscape.errors import InputError
from reports.collect import SharpnessSpec, collect, run_table, sharpness_per_run
from reports.site import write_report
from reports.tables import severity_table, summary_table
from reports.tradeoff import fit_beta

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# β


def power_law(n, exponent, seed, scale=0.7, noise=0.1):
    generator = np.random.default_rng(seed)
    sharpness = np.exp(generator.uniform(np.log(0.1), np.log(3.0), n))
    diversity = scale * sharpness ** exponent * np.exp(generator.normal(0.0, noise, n))
    return sharpness, diversity


def test_beta_recovers_the_exponent_inside_its_interval_and_matches_scipy():
    sharpness, diversity = power_law(40, 0.45, seed=1)
    fit = fit_beta(sharpness, diversity)
    assert fit.ci_low < 0.45 < fit.ci_high
    reference = stats.linregress(np.log(sharpness), np.log(diversity))
    assert fit.beta == pytest.approx(reference.slope, rel=1e-12)
    assert fit.intercept == pytest.approx(reference.intercept, rel=1e-12)
    assert fit.r2 == pytest.approx(reference.rvalue ** 2, rel=1e-12)
    assert fit.n == 40
    # The t interval of the slope: ±t(n−2, 0.975) standard errors.
    assert fit.stderr == pytest.approx(reference.stderr, rel=1e-9)
    assert fit.ci_high - fit.ci_low == pytest.approx(2 * stats.t.ppf(0.975, 38) * reference.stderr, rel=1e-9)


def test_beta_and_its_interval_are_the_least_squares_slope_and_its_t_interval():
    # A small group, where the t quantile (2.78 at n = 6) matters, against linregress and against
    # the closed form of the module text computed here independently.
    sharpness, diversity = power_law(6, 0.3, seed=7, noise=0.3)
    x, y = np.log(sharpness), np.log(diversity)
    fit = fit_beta(sharpness, diversity)
    reference = stats.linregress(x, y)
    half = stats.t.ppf(0.975, 4) * reference.stderr
    assert (fit.beta, fit.ci_low, fit.ci_high) == pytest.approx(
        (reference.slope, reference.slope - half, reference.slope + half), rel=1e-12)
    centred = x - x.mean()
    slope = (centred * (y - y.mean())).sum() / (centred ** 2).sum()
    residual = y - (y.mean() - slope * x.mean()) - slope * x
    assert fit.beta == pytest.approx(slope, rel=1e-10)
    assert fit.stderr == pytest.approx(np.sqrt((residual ** 2).sum() / 4 / (centred ** 2).sum()), rel=1e-10)


def test_beta_of_equal_diversities_is_exactly_zero_and_not_told_from_noise():
    fit = fit_beta([0.1, 0.2, 0.3, 0.5, 1.0], [0.5] * 5)
    assert (fit.beta, fit.ci_low, fit.ci_high, fit.stderr) == (0.0, 0.0, 0.0, 0.0) and np.isnan(fit.r2)
    assert "interval contains 0" in fit.verdict


def test_beta_interval_shrinks_with_more_points():
    widths = {}
    for n in (12, 300):
        fit = fit_beta(*power_law(n, -0.3, seed=2))
        assert fit.ci_low < -0.3 < fit.ci_high
        widths[n] = fit.ci_high - fit.ci_low
    assert widths[300] < 0.5 * widths[12]  # ~ 1/sqrt(n): 0.2 expected


def test_beta_interval_covers_the_true_exponent_about_95_percent_of_the_time():
    covered = [fit.ci_low <= 0.6 <= fit.ci_high
               for fit in (fit_beta(*power_law(25, 0.6, seed=100 + s)) for s in range(150))]
    assert 0.86 <= np.mean(covered) <= 0.995


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 100.0), power=st.floats(0.2, 3.0))
def test_beta_follows_rescaling_of_the_axes(scale, power):
    """log(c·S) shifts x, so β is unchanged; D**k multiplies log D by k, so β is multiplied by k."""
    sharpness, diversity = power_law(10, 0.8, seed=3)
    base = fit_beta(sharpness, diversity)
    assert fit_beta(scale * sharpness, diversity).beta == pytest.approx(base.beta, rel=1e-9)
    assert fit_beta(sharpness, diversity ** power).beta == pytest.approx(power * base.beta, rel=1e-9)


@pytest.mark.parametrize("sharpness, diversity, message", [
    ([0.1, 0.2], [0.3, 0.4], "at least 3"),
    ([0.1, 0.0, 0.3], [0.3, 0.4, 0.5], "positive"),
    ([0.1, 0.2, 0.3], [0.3, -0.4, 0.5], "positive"),
    ([0.1, np.nan, 0.3], [0.3, 0.4, 0.5], "NaN"),
    ([0.2, 0.2, 0.2], [0.3, 0.4, 0.5], "same sharpness"),
    ([0.1, 0.2, 0.3], [0.3, 0.4], "one of each"),
])
def test_beta_rejects_what_it_cannot_fit(sharpness, diversity, message):
    with pytest.raises(InputError, match=message):
        fit_beta(sharpness, diversity)


# ----------------------------------------------------------------------------------------------
# collecting and tables, on hand-made rows


def clean_and_corrupted(path, *, members, ensemble, eir, der, corrupted, combine="probs"):
    """Clean test rows plus corrupted rows; ``corrupted`` maps (corruption, severity) to
    (member accuracies, ensemble accuracy)."""
    rows = fixtures.evaluation_rows(members, {"accuracy": ensemble, "eir": eir, "der": der}, combine=combine)
    for (corruption, severity), (member_values, ensemble_value) in corrupted.items():
        rows += fixtures.evaluation_rows(member_values, {"accuracy": ensemble_value, "der": der},
                                         corruption=corruption, severity=severity, combine=combine)
    run_folder.append_results(path, rows)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """Three runs with round numbers: a and b use sgd, c uses sam."""
    root = tmp_path_factory.mktemp("small")
    a = fixtures.make_run(root / "a", method="sgd", model_args={"input_size": 4, "hidden": [2], "width": 8})
    b = fixtures.make_run(root / "b", method="sgd")
    c = fixtures.make_run(root / "c", method="sam", rho=0.2, sparsity=0.5)
    clean_and_corrupted(a, members=[0.80, 0.85, 0.90], ensemble=0.90, eir=0.30, der=0.40,
                        corrupted={("fog", 1): ([0.70] * 3, 0.75), ("fog", 2): ([0.60] * 3, 0.62),
                                   ("snow", 1): ([0.50] * 3, 0.55), ("snow", 2): ([0.40] * 3, 0.50)})
    clean_and_corrupted(b, members=[0.70, 0.70, 0.76], ensemble=0.80, eir=0.10, der=0.20,
                        corrupted={("fog", 1): ([0.60] * 3, 0.65), ("fog", 2): ([0.50] * 3, 0.52),
                                   ("snow", 1): ([0.40] * 3, 0.45), ("snow", 2): ([0.30] * 3, 0.40)})
    clean_and_corrupted(c, members=[0.90, 0.90, 0.90], ensemble=0.93, eir=0.50, der=0.25,
                        corrupted={("fog", 1): ([0.80] * 3, 0.85), ("snow", 1): ([0.60] * 3, 0.61)})
    # Rows of another combine mode must not leak into the probs tables.
    clean_and_corrupted(c, members=[0.90, 0.90, 0.90], ensemble=0.10, eir=0.90, der=0.90, corrupted={},
                        combine="logits")
    # a: members' rows only; c: a mean row that differs from its members' mean, so the rule shows.
    run_folder.append_results(a, fixtures.sharpness_rows([1.0, 2.0, 3.0], with_mean_row=False))
    run_folder.append_results(c, fixtures.sharpness_rows([1.0, 2.0, 3.0], with_mean_row=False)
                        + [{"scope": "ensemble", "metric": fixtures.SHARPNESS_METRIC, "aggregate": "mean",
                            "value": 2.5, "rho": 0.5, "m": 5}]
                        + fixtures.sharpness_rows([9.0, 9.0, 9.0], rho=0.25))
    # ECE of a measured twice with different settings: the newer measurement is the one reported.
    run_folder.append_results(a, [{"scope": "ensemble", "metric": "ece", "value": 0.10, "n_bins": 15, "combine": "probs",
                             **fixtures.slice_columns()}])
    run_folder.append_results(a, [{"scope": "ensemble", "metric": "ece", "value": 0.04, "n_bins": 10, "combine": "probs",
                             **fixtures.slice_columns()}])
    paths = [a, b, c]
    table = run_table(paths)
    return paths, table, collect(paths, table)


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


def test_grouping_by_a_field_some_runs_lack(small_study):
    _, table, results = small_study
    by_sparsity = summary_table(results, table, group_by="sparsity")
    assert list(by_sparsity.mean.index) == ["0.5", "(unset)"]
    assert list(by_sparsity.runs) == [1, 2]
    with pytest.raises(InputError, match="no run has the field 'depth'.*method"):
        summary_table(results, table, group_by="depth")
    with pytest.raises(InputError, match="--baseline 'adam'.*sam, sgd"):
        severity_table(results, table, baseline="adam")


def severity_study(root, methods):
    """One run per method; methods named in ``evaluated`` get clean and corrupted accuracy rows,
    the others (an imported ensemble) none."""
    paths = []
    for method, evaluated in methods:
        path = fixtures.make_run(root / method, method=method)
        if evaluated:
            clean_and_corrupted(path, members=[0.7, 0.7, 0.7], ensemble=0.75, eir=0.1, der=0.2,
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


def test_curvature_metrics_parse_without_a_radius():
    assert SharpnessSpec.parse("hessian/trace") == SharpnessSpec("hessian/trace", None)
    assert SharpnessSpec.parse("fisher/q90") == SharpnessSpec("fisher/q90", None)
    assert SharpnessSpec.parse(" sharpness-error/average/linf/standard @ 0.1") == \
        SharpnessSpec("sharpness-error/average/linf/standard", 0.1)
    for text in ("bogus", "", "@0.5", "hessian/density", "fisher"):
        with pytest.raises(InputError, match="expected sharpness/<worst|average>"):
            SharpnessSpec.parse(text)


# ----------------------------------------------------------------------------------------------
# the full report on the nine-run study: figures, tables, index.html


@pytest.fixture(scope="module")
def study_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    paths = fixtures.write_study(root / "runs")
    empty = fixtures.make_run(root / "runs" / "unmeasured", method="sam")
    report = write_report([*paths, empty], root / "report", formats=("png",))
    return paths, empty, report


def only_axes(figures):
    assert figures.reason is None and figures.figures, figures.reason
    return [ax for figure in figures.figures for ax in figure.axes if ax.get_visible()]


def assert_pngs(figures):
    assert figures.paths
    for path in figures.paths:
        data = Path(path).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, path


def test_tradeoff_figure_shows_each_groups_power_law(study_report):
    paths, _, report = study_report
    figures = report.rendered["tradeoff-eir"]
    assert_pngs(figures)
    ax = only_axes(figures)[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "Sharpness" in ax.get_xlabel() and "ρ = 0.5" in ax.get_xlabel()
    assert "DER" in ax.get_ylabel() and "corrupted" in ax.get_ylabel()
    assert ax.get_legend() is None  # the legend sits outside the axes, on the figure
    labels = [text.get_text() for text in figures.figures[0].legends[0].get_texts()]
    for method, (_, beta) in fixtures.STUDY_LAWS.items():
        assert any(label.startswith(f"{method}: β = {beta:.2f} [{beta:.2f}, {beta:.2f}]") for label in labels), labels
    # one marker per measured run at (members' mean sharpness, DER) as the fixture defines them
    sam_points = np.asarray(ax.collections[0].get_offsets())
    expected = [(0.25 * 2 ** r, 0.5 * (0.25 * 2 ** r) ** 0.6) for r in range(3)]
    np.testing.assert_allclose(sam_points[np.argsort(sam_points[:, 0])], expected, rtol=1e-12)
    colourbar = figures.figures[0].axes[-1]
    assert "EIR" in colourbar.get_ylabel()
    accuracy_colour = report.rendered["tradeoff-member-accuracy"]
    assert_pngs(accuracy_colour)
    assert "accuracy (%)" in accuracy_colour.figures[0].axes[-1].get_ylabel()


def test_method_severity_size_and_reliability_figures(study_report):
    _, _, report = study_report
    methods = report.rendered["methods"]
    assert_pngs(methods)
    clean, corrupted = only_axes(methods)
    assert "Accuracy" in clean.get_ylabel() and "(%)" in clean.get_ylabel() and clean.get_xlabel() == "method"
    assert [tick.get_text() for tick in clean.get_xticklabels()] == ["sam", "sgd", "sharpbalance"]
    member_bars = clean.containers[0]
    # sgd members: (0.90 + 0.89 + 0.88) / 3 on clean data
    assert member_bars[1].get_height() == pytest.approx(89.0)

    severity = report.rendered["severity"]
    assert_pngs(severity)
    accuracy_ax, eir_ax = only_axes(severity)
    assert accuracy_ax.get_ylabel() == "Accuracy (%)" and "severity" in accuracy_ax.get_xlabel()
    assert "EIR" in eir_ax.get_ylabel()
    sgd_ensemble = next(curve for curve in accuracy_ax.containers if curve.get_label() == "sgd, ensemble").lines[0]
    # mean over runs r of 92 + r - 4s - (0.5 for fog's extra point): 93 at clean, 88.5 at severity 1
    assert list(sgd_ensemble.get_xdata()) == [0, 1, 2, 3, 4, 5]
    assert sgd_ensemble.get_ydata()[:2] == pytest.approx([93.0, 88.5])

    size = report.rendered["ensemble-size"]
    assert_pngs(size)
    axes = only_axes(size)
    assert all(ax.get_xlabel().startswith("Number of members k") for ax in axes)
    line = next(curve for curve in axes[0].containers if curve.get_label() == "sam").lines[0]
    assert list(line.get_xdata()) == [1, 2, 3]
    # k = 1 is the mean member: sam members 0.91, 0.90, 0.89 on clean data in every run
    assert line.get_ydata()[0] == pytest.approx(90.0)
    assert len(axes) == 4 and "EIR" in axes[2].get_ylabel()  # rows accuracy, EIR; columns ID, OOD
    eir_line = next(curve for curve in axes[2].containers if curve.get_label() == "sam").lines[0]
    assert list(eir_line.get_xdata()) == [1, 2, 3] and eir_line.get_ydata()[0] == 0.0
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks

    reliability = report.rendered["reliability"]
    assert_pngs(reliability)
    axes = only_axes(reliability)
    assert len(axes) == 6  # 3 groups x (clean, corrupted)
    assert all(ax.get_xlabel().startswith("Confidence") and ax.get_ylabel() == "Accuracy" for ax in axes)
    assert axes[0].get_title().startswith("sam (ID), ECE = 0.020")


def bar_geometry(container):
    """(x centre, bottom, top) of every bar of a bar container."""
    return [(bar.get_x() + bar.get_width() / 2, bar.get_y(), bar.get_y() + bar.get_height()) for bar in container]


def test_methods_figure_draws_a_negative_improvement_below_the_member_bar(tmp_path):
    from reports import plots

    # sgd: ensemble 36.49 below its members' mean 36.77; sam: ensemble 85 above its members' 80
    worse = fixtures.make_run(tmp_path / "worse", method="sgd")
    run_folder.append_results(worse, fixtures.evaluation_rows([0.3577, 0.3677, 0.3777], {"accuracy": 0.3649}))
    better = fixtures.make_run(tmp_path / "better", method="sam")
    run_folder.append_results(better, fixtures.evaluation_rows([0.80, 0.80, 0.80], {"accuracy": 0.85}))
    figures = plots.plot_method_comparison(collect([worse, better]), tmp_path / "figures", formats=("png",))
    ax = only_axes(figures)[0]
    bars = {container.get_label(): bar_geometry(container) for container in ax.containers
            if isinstance(container, matplotlib.container.BarContainer)}
    sam, sgd = 0, 1  # reading order
    members = bars["mean member"]
    assert members[sam] == pytest.approx((sam, 0.0, 80.0)) and members[sgd] == pytest.approx((sgd, 0.0, 36.77))
    # the improvement is a block from the members' mean up to the ensemble, for sam only
    assert bars["ensemble improvement"] == [pytest.approx((sam, 80.0, 85.0))]
    # the shortfall spans ensemble to members' mean, inside the member bar, in a distinct colour
    assert bars["ensemble below members"] == [pytest.approx((sgd, 36.49, 36.77))]
    shortfall = next(c for c in ax.containers if c.get_label() == "ensemble below members")[0]
    assert shortfall.get_hatch() and shortfall.get_facecolor() != ax.containers[0][sgd].get_facecolor()
    # nothing drawn at sgd reaches above its members' mean
    tops = [top for geometry in bars.values() for x, _, top in geometry if x == pytest.approx(sgd)]
    assert max(tops) == pytest.approx(36.77)
    # the error bar is centred on the ensemble's accuracy
    errorbar = next(c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer))
    segments = errorbar.lines[2][0].get_segments()
    assert [np.mean(segment[:, 1]) for segment in segments] == pytest.approx([85.0, 36.49])


def in_view(ticks, limits):
    return [t for t in ticks if min(limits) * (1 - 1e-9) <= t <= max(limits) * (1 + 1e-9)]


def test_tradeoff_log_axes_are_readable_on_a_narrow_range_and_the_legend_is_outside(tmp_path):
    from reports import plots

    paths = []
    for r, sharpness in enumerate((0.87, 1.0, 1.2)):
        path = fixtures.make_run(tmp_path / f"sam-{r}", method="sam")
        rows = fixtures.evaluation_rows([0.8] * 3, {"accuracy": 0.85, "der": 0.3 * sharpness ** 0.5, "eir": 0.2})
        run_folder.append_results(path, rows + fixtures.sharpness_rows([sharpness] * 3))
        paths.append(path)
    figures = plots.plot_tradeoff(collect(paths), tmp_path / "figures", on="test",
                                  formats=("png",))
    figure = figures.figures[0]
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        ticks = in_view(axis.get_major_locator()(), limits)
        labels = axis.get_major_formatter().format_ticks(ticks)
        # at least three distinct labels, each the number at its tick
        assert len(set(labels)) >= 3, labels
        assert [float(label) for label in labels] == pytest.approx(ticks, rel=1e-9)
    x_ticks = in_view(ax.xaxis.get_major_locator()(), ax.get_xlim())
    assert min(x_ticks) <= 0.95 and max(x_ticks) >= 1.1  # the data's range 0.87-1.2 can be read off
    # the legend is outside the axes: its box does not overlap the plotting area
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    area = ax.get_window_extent()
    assert legend.x0 >= area.x1 or legend.y1 <= area.y0 or legend.x1 <= area.x0 or legend.y0 >= area.y1


def test_tradeoff_log_axes_keep_decade_ticks_on_a_wide_range(study_report):
    _, _, report = study_report
    ax = report.rendered["tradeoff-eir"].figures[0].axes[0]
    ticks = in_view(ax.xaxis.get_major_locator()(), ax.get_xlim())
    # sharpness 0.225 to 4.4: ticks at 1, 2, 5 times powers of ten
    assert {0.5, 1.0, 2.0} <= {round(t, 12) for t in ticks}
    mantissas = {round(t / 10 ** np.floor(np.log10(t)), 9) for t in ticks}
    assert mantissas <= {1.0, 2.0, 5.0}


def test_connectivity_figures_come_from_the_pair_rows(study_report):
    _, _, report = study_report
    barriers = report.rendered["barriers"]
    assert_pngs(barriers)
    assert [Path(p).name for p in barriers.paths] == ["barriers-sam-0.png"]
    heatmap = only_axes(barriers)[0]
    assert heatmap.get_xlabel() == "Member" and "sam-0" in heatmap.get_title()
    annotations = [text.get_text() for text in heatmap.texts]
    # barrier of pair (i, j) is 0.1·(i + j + 1) in the fixture
    assert annotations == ["0", "0.2", "0.3", "0.2", "0", "0.4", "0.3", "0.4", "0"]
    interpolation = report.rendered["interpolation"]
    assert_pngs(interpolation)
    loss_ax, accuracy_ax = only_axes(interpolation)
    assert loss_ax.get_xlabel() == "Interpolation coefficient α" and accuracy_ax.get_ylabel() == "Accuracy (%)"
    assert len(loss_ax.get_lines()) == 3
    peak = next(line for line in loss_ax.get_lines() if line.get_label() == "members 1–2")
    assert max(peak.get_ydata()) == pytest.approx(0.5 + 0.4)
    plane = report.rendered["plane"]
    assert_pngs(plane)
    loss_ax, accuracy_ax = only_axes(plane)[:2]
    assert loss_ax.get_xlabel().startswith("u (") and loss_ax.get_ylabel().startswith("v (")
    assert "Loss" in loss_ax.get_title() and "Accuracy" in accuracy_ax.get_title()


def test_plots_skip_with_a_reason_when_rows_are_absent(tmp_path):
    from reports import plots

    path = fixtures.make_run(tmp_path / "bare")
    run_folder.append_results(path, fixtures.evaluation_rows([0.5, 0.6, 0.7], {"accuracy": 0.7}))
    results = collect([path])
    for function, command in [(plots.plot_tradeoff, "sharpdiv"), (plots.plot_severity, "--corruptions all"),
                              (plots.plot_ensemble_size, "sharpdiv evaluate"), (plots.plot_reliability, "sharpdiv evaluate"),
                              (plots.plot_barriers, "sharpdiv connectivity"), (plots.plot_interpolation, "sharpdiv connectivity"),
                              (plots.plot_plane, "--plane")]:
        figures = function(results, tmp_path / "figures")
        assert figures.paths == () and figures.figures == (), function.__name__
        assert figures.reason and (command in figures.reason or "sharpness" in figures.reason), figures.reason
    assert not (tmp_path / "figures").exists()


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets = []

    def handle_starttag(self, tag, attributes):
        self.targets += [value for name, value in attributes if name in ("href", "src")]


def test_index_links_every_written_file_and_nothing_else(study_report):
    _, _, report = study_report
    parser = Links()
    parser.feed(report.index.read_text(encoding="utf-8"))
    linked = {(report.directory / target).resolve() for target in parser.targets}
    assert all(path.is_file() for path in linked), sorted(p for p in linked if not p.is_file())
    # The folder's .sharpdiv marker (ensembles.folders) is bookkeeping, not part of the report.
    written = {path.resolve() for path in report.directory.rglob("*") if path.is_file()} - {
        report.index.resolve(), (report.directory / ".sharpdiv").resolve()}
    assert written == linked
    names = {path.name for path in written}
    assert {"summary.csv", "summary.md", "summary.tex", "severity-ensemble.tex", "tradeoff-beta.csv",
            "runs.csv", "README.md", "tradeoff-eir.png", "plane-sam-0.png"} <= names
    readme = report.readme.read_text(encoding="utf-8")
    assert all(path.relative_to(report.directory).as_posix() in readme for path in written - {report.readme.resolve()})


def test_report_tables_hold_the_study_numbers(study_report):
    paths, empty, report = study_report
    beta = pd.read_csv(report.directory / "tables" / "tradeoff-beta.csv").set_index("method")
    for method, (_, exponent) in fixtures.STUDY_LAWS.items():
        assert beta.loc[method, "beta"] == pytest.approx(exponent)
        assert beta.loc[method, "n"] == 3
    summary = pd.read_csv(report.directory / "tables" / "summary.csv")
    sam = summary[(summary["method"] == "sam") & (summary["quantity"] == "member accuracy ID (%)")].iloc[0]
    # sam members 0.91, 0.90, 0.89 on clean data in every run; the unmeasured sam run has no value
    assert sam["mean"] == pytest.approx(90.0) and sam["count"] == 3
    latex = (report.directory / "tables" / "severity-ensemble.tex").read_text()
    assert "\\begin{tabular}" in latex and "$\\pm$" in latex and "\\toprule" in latex
    assert any(f"run {empty} has no evaluation: run `sharpdiv evaluate {empty}`" == note for note in report.notes)


# ----------------------------------------------------------------------------------------------
# the command


def test_report_command_end_to_end_names_missing_measurements(tmp_path):
    measured = []
    for r, sharpness in enumerate((0.2, 0.4, 0.8)):
        path = fixtures.make_run(tmp_path / f"sam-{r}", method="sam", rho=0.05 * (r + 1))
        rows = fixtures.evaluation_rows([0.8, 0.8, 0.8], {"accuracy": 0.85, "der": 0.3 * sharpness ** 0.5, "eir": 0.2})
        run_folder.append_results(path, rows + fixtures.sharpness_rows([sharpness] * 3))
        measured.append(path)
    unsharp = fixtures.make_run(tmp_path / "no-sharpness", method="sgd")
    run_folder.append_results(unsharp, fixtures.evaluation_rows([0.7, 0.7, 0.7], {"accuracy": 0.75, "der": 0.5}))
    out = tmp_path / "report"
    result = CliRunner().invoke(cli.main, ["report", *map(str, measured), str(unsharp), "--out", str(out),
                                           "--diversity-on", "test", "--sharpness", "sharpness/worst/l2/adaptive@0.5"])
    assert result.exit_code == 0, result.output
    assert f"open {out / 'index.html'}" in result.stdout
    assert f"run {unsharp} has no sharpness/worst/l2/adaptive@0.5: run `sharpdiv sharpness {unsharp} --rho 0.5`" \
        in result.stderr
    assert f"run {unsharp} has no corrupted-data evaluation: run `sharpdiv evaluate {unsharp} --corruptions all`" \
        in result.stderr
    for name in ("tradeoff-eir.png", "tradeoff-eir.svg", "methods.svg"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert "<svg" in (out / "figures" / "tradeoff-eir.svg").read_text()
    beta = pd.read_csv(out / "tables" / "tradeoff-beta.csv").set_index("method")
    assert beta.loc["sam", "beta"] == pytest.approx(0.5)
    assert np.isnan(beta.loc["sgd", "beta"]) and "no run has both" in beta.loc["sgd", "note"]
    assert "sharpdiv sharpness" in (out / "index.html").read_text()


@pytest.mark.parametrize("options, message", [
    (["--group-by", "depth"], "no run has the field 'depth'"),
    (["--baseline", "adam"], "--baseline 'adam' is not a method"),
    (["--sharpness", "sharpness/worst/l2/adaptive"], "names no radius"),
    (["--sharpness", "sharpness/worst/l3/adaptive@0.5"], "the metric is sharpness/"),
    (["--sharpness", "bogus"], "expected sharpness/<worst|average>/<l2|linf>/<adaptive|standard>@RHO"),
    (["--sharpness", "bogus@0.5"], "expected sharpness/<worst|average>/<l2|linf>/<adaptive|standard>@RHO"),
    (["--sharpness", "hessian/eigenvalue"], "expected sharpness/<worst|average>/<l2|linf>/<adaptive|standard>@RHO"),
    (["--sharpness", "hessian/trace@0.5"], "hessian/trace takes no radius"),
    (["--sharpness", "sharpness/worst/l2/adaptive@-1"], "the radius must be a positive number"),
])
def test_report_command_bad_input_exits_2_with_one_line(tmp_path, options, message):
    path = fixtures.make_run(tmp_path / "run")
    run_folder.append_results(path, fixtures.evaluation_rows([0.5, 0.6, 0.7], {"accuracy": 0.7}))
    result = CliRunner().invoke(cli.main, ["report", str(path), "--out", str(tmp_path / "out"), *options])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # refused before anything is written
