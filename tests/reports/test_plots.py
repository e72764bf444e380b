"""The report's figures (reports.plots): every figure renders with the right axes, points and labels,
draws the newest measurement only, and is skipped with a reason when its rows are absent."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest

from ensembles.runs import run_folder
from reports import plots
from reports.collect import collect

import results_fixtures as fixtures


# ----------------------------------------------------------------------------------------------
# the newest measurement of a grid


def test_plane_figure_draws_the_newest_plane_with_one_kind_of_row(tmp_path):
    path = fixtures.make_run(tmp_path / "run")
    old = [row for row in fixtures.plane_rows(indexed=False) if (row["u"], row["v"]) != (1.0, 1.0)]
    fixtures.append_as_before_grid_indices(path, [{**row, "u": row["u"] + 1e-12} for row in old])  # other bits
    run_folder.append_results(path, fixtures.plane_rows())
    results = collect([path])
    grid = plots._newest_grid(results[results["metric"] == "plane/loss"], ["u_index", "v_index"], ["u", "v"])
    assert len(grid) == 16 and grid["u_index"].notna().all()  # the 15 old rows are not drawn with it
    assert plots.plot_plane(results, tmp_path, formats=("png",)).figures


def test_density_figure_draws_the_newest_measurement_only(tmp_path):
    path = fixtures.make_run(tmp_path / "run")
    for n_iters, grid, shift in ((4, 7, 0.0), (6, 5, 0.1)):  # other settings, other places
        run_folder.append_results(path, [{**fixtures.density_row(index, index + shift, value=n_iters),
                                          "n_iters": n_iters, "grid": grid} for index in range(grid)])
    figure = plots.plot_density(collect([path]), tmp_path, formats=("png",)).figures[0]
    (line,) = figure.axes[0].lines
    np.testing.assert_array_equal(line.get_xydata(), [[index + 0.1, 6] for index in range(5)])


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# the figures of the nine-run study's report


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


# ----------------------------------------------------------------------------------------------
# points, labels and bars


def _texts(figure):
    return [text.get_text() for ax in figure.axes for text in ax.texts]


def test_tradeoff_labels_each_sam_point_with_its_radius_and_bars_start_at_zero(study, tmp_path):
    from reports import plots

    _, _, _, results = study
    figure = plots.plot_tradeoff(results, tmp_path, formats=("png",)).figures[0]
    labels = _texts(figure)
    # write_study: sam and sharpbalance runs r = 0, 1, 2 were trained at ρ = 0.05 (r + 1); sgd has no ρ
    assert sorted(labels) == sorted([f"ρ={0.05 * (r + 1):g}" for r in range(3)] * 2)
    legend = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert any("too few ensembles" in text for text in legend)  # 3 runs per method
    bars = plots.plot_method_comparison(results, tmp_path, formats=("png",)).figures[0]
    assert all(ax.get_ylim()[0] == 0 for ax in bars.axes if ax.patches)


def test_density_figure_and_member_positions_on_the_plane(tmp_path):
    from reports import plots

    path = fixtures.make_run(tmp_path / "run", method="sgd")
    where = {"dataset": "cifar10", "split": "train", "n_iters": 20, "n_runs": 1, "grid": 5}
    rows = [{"scope": f"member-{i}", "metric": "hessian/density", "value": float(np.exp(-x * x)),
             "grid_index": k, "eigenvalue": x, **where} for i in range(3) for k, x in enumerate(np.linspace(-1, 3, 5))]
    rows += fixtures.plane_rows()
    rows += [{"scope": f"member-{i}", "metric": metric, "value": 0.5, "u": u, "v": v, "grid": 4,
              "dataset": "cifar10", "split": "test"}
             for i, (u, v) in enumerate([(0.0, 0.0), (1.0, 0.0), (0.4, 0.8)])
             for metric in ("plane/loss", "plane/accuracy")]
    run_folder.append_results(path, rows)
    results = collect([path])
    density = plots.plot_density(results, tmp_path, formats=("png",))
    assert density.reason is None and len(density.figures[0].axes[0].lines) == 3
    plane = plots.plot_plane(results, tmp_path, formats=("png",)).figures[0]
    assert sorted(_texts(plane)) == sorted(["m0", "m1", "m2"] * 2)
    assert plots.plot_density(collect([fixtures.make_run(tmp_path / "bare", method="sgd")]), tmp_path).reason
