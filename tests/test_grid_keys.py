"""Rows on a computed grid are keyed by grid index, never by a computed float, and rows keyed the
old way still read and are reused.

A spectral density's grid spans the Ritz values and a loss plane's coordinates come from the
members' weights: their last bits are one CPU's. Such rows are keyed by ``grid_index`` (``u_index``,
``v_index``) and keep the place in a location column (``eigenvalue``, ``u``, ``v``) that is not part
of the key. α is ``i/(alphas − 1)``, the same double on every machine. Tables written before (places
as settings, α from ``torch.linspace``) are reused as they are when whole; a grid is never assembled
from the two kinds of rows, and figures draw one kind per measurement.
"""
import math
import shutil
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
import torch

import landscape.connectivity
import landscape.hessian
import results_fixtures as fixtures
from ensembles.runs import run_folder
from ensembles.studies import measurements
from landscape.connectivity import evenly_spaced_alphas
from reports import plots
from reports.collect import collect
from test_measurements import counting, make_run

DENSITY = dict(n_examples=16, batch_size=8, trace=False, density=True, lanczos_steps=4, density_grid=5)
PATHS = dict(split="val", n_examples=10, bn_reset=False, batch_size=8)


# ----------------------------------------------------------------------------------------------
# the results table: a location is stored, not keyed


def density_row(index, eigenvalue, value=0.5):
    return {"scope": "member-0", "metric": "hessian/density", "value": value, "grid_index": index,
            "eigenvalue": eigenvalue, "grid": 5, "n_iters": 4, "dataset": "digits", "split": "train",
            "data": "0123456789abcdef"}


def test_the_same_grid_point_placed_an_ulp_apart_is_one_row(tmp_path):
    # what another CPU computes for the same measurement: the place differs in its last bit
    path = fixtures.make_run(tmp_path / "run")
    run_folder.append_results(path, [density_row(3, 0.25, value=0.5)])
    run_folder.append_results(path, [density_row(3, math.nextafter(0.25, 1.0), value=0.75)])
    table = run_folder.read_results(path)
    assert len(table) == 1 and table["value"].tolist() == [0.75]  # the newer replaced it: one key
    assert table["eigenvalue"].tolist() == [math.nextafter(0.25, 1.0)]  # its place is stored beside it
    assert "eigenvalue" not in table["settings"].iloc[0] and '"grid_index": 3' in table["settings"].iloc[0]


def test_rows_written_before_keep_their_place_as_a_setting_and_still_read(tmp_path):
    path = fixtures.make_run(tmp_path / "run")
    old = {key: value for key, value in density_row(3, 0.25).items() if key != "grid_index"}
    fixtures.append_as_before_grid_indices(path, [old, {**old, "eigenvalue": 0.5}])
    table = run_folder.read_results(path)
    assert table["eigenvalue"].tolist() == [0.25, 0.5] and all('"eigenvalue"' in text for text in table["settings"])


def test_two_rows_of_one_key_in_one_append_are_refused(tmp_path):
    # a grid written without its index would collapse into one row per measurement: refused, nothing stored
    path = fixtures.make_run(tmp_path / "run")
    rows = [{key: value for key, value in density_row(0, x).items() if key != "grid_index"} for x in (0.1, 0.2)]
    with pytest.raises(ValueError, match="rows of a grid need their grid index"):
        run_folder.append_results(path, rows)
    assert run_folder.read_results(path).empty


# ----------------------------------------------------------------------------------------------
# α: the same double on every machine


@pytest.mark.parametrize("count", [2, 3, 7, 11, 21, 41, 100])
def test_alphas_are_the_doubles_nearest_i_over_count_minus_one(count):
    alphas = evenly_spaced_alphas(count).tolist()
    assert alphas == [float(Fraction(i, count - 1)) for i in range(count)]  # correctly rounded: no CPU in it
    assert alphas == evenly_spaced_alphas(2 * count - 1).tolist()[::2]  # a finer grid shares every point
    assert landscape.connectivity._alpha_grid(count).tolist() == alphas


def test_a_count_below_two_is_refused():
    for count in (1, 0, True):
        with pytest.raises(landscape.connectivity.InputError, match="at least 2"):
            evenly_spaced_alphas(count)


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A three-member run and the rows its measurements write (new format), to store again in copies:
    ``(path, density rows, path and plane rows)``."""
    path = make_run(tmp_path_factory.mktemp("grid") / "cnn", n_members=3)
    (density,) = measurements.measure_hessian([path], **DENSITY)
    (paths,) = measurements.measure_connectivity([path], alphas=21, plane=True, grid=2, **PATHS)
    return path, density.rows, paths.rows


def fresh_copy(members, tmp_path):
    """The run's members without any results."""
    path = tmp_path / "cnn"
    shutil.copytree(members[0], path)
    shutil.rmtree(path / run_folder.RESULTS_DIR)
    return path


def store(path, rows, before_grid_indices=False):
    """Store ``rows`` for the run's current weights; ``before_grid_indices``: as the code before them
    wrote them (no index; the place a setting, in the key)."""
    weights = run_folder.load_run(path).weights
    if before_grid_indices:
        rows = [{key: value for key, value in row.items() if key not in ("grid_index", "u_index", "v_index")}
                for row in rows]
        return fixtures.append_as_before_grid_indices(path, rows, weights=weights)
    return run_folder.append_results(path, rows, weights=weights)


def linspace_like(rows):
    """Path rows with α as an AVX2 ``torch.linspace(0, 1, 21)`` may give them: an ulp below i/20
    (its 0.55 is 0.5499999999999999); here every α strictly between 0.5 and 1."""
    return [{**row, "alpha": math.nextafter(row["alpha"], 0.0)} if 0.5 < row.get("alpha", 0.0) < 1.0 else row
            for row in rows]


def test_paths_stored_with_linspace_alphas_an_ulp_off_are_reused(members, tmp_path, monkeypatch):
    path = fresh_copy(members, tmp_path)
    rows = [row for row in members[2] if row["metric"].startswith("connectivity/")]
    store(path, linspace_like(rows))
    assert 0.5499999999999999 in set(run_folder.read_results(path)["alpha"])
    calls = counting(monkeypatch, landscape.connectivity, "loss_barrier")
    (again,) = measurements.measure_connectivity([path], alphas=21, **PATHS)
    assert calls == [] and again.computed == () and len(again.reused) == 3


def test_paths_stored_at_other_alphas_are_measured_again(members, tmp_path, monkeypatch):
    path = fresh_copy(members, tmp_path)
    rows = [row for row in members[2] if row["metric"].startswith("connectivity/")]
    store(path, [{**row, "alpha": row["alpha"] + 1e-6} if 0.0 < row.get("alpha", 0.0) < 1.0 else row for row in rows])
    calls = counting(monkeypatch, landscape.connectivity, "loss_barrier")
    (again,) = measurements.measure_connectivity([path], alphas=21, **PATHS)
    assert len(calls) == 3 and len(again.computed) == 3  # 1e-6 away is another point, not the same one


def test_a_path_is_drawn_once_per_alpha_from_old_and_new_rows(members, tmp_path):
    path = fresh_copy(members, tmp_path)
    rows = [row for row in members[2] if row["metric"].startswith("connectivity/")]
    store(path, [{**row, "value": row["value"] + 1.0} for row in linspace_like(rows)])  # older, other values
    store(path, rows)
    figure = plots.plot_interpolation(collect([path]), tmp_path, formats=("png",)).figures[0]
    drawn = {line.get_label(): line.get_xydata() for line in figure.axes[0].lines}
    for scope in ("pair-0-1", "pair-0-2", "pair-1-2"):
        curve = [[row["alpha"], row["value"]] for row in rows if row["scope"] == scope and
                 row["metric"] == "connectivity/loss"]
        np.testing.assert_array_equal(drawn[scope.replace("pair-", "members ").replace("-", "–")], curve)


# ----------------------------------------------------------------------------------------------
# densities and planes keyed the old way


def test_a_whole_density_stored_before_grid_indices_is_reused_as_it_is(members, tmp_path, monkeypatch):
    path = fresh_copy(members, tmp_path)
    store(path, members[1], before_grid_indices=True)
    calls = counting(monkeypatch, landscape.hessian, "hessian_spectral_density")
    (again,) = measurements.measure_hessian([path], **DENSITY)
    assert calls == [] and again.rows == [] and len(again.reused) == 3
    # and the figure draws the same curves from it as from the rows keyed by index
    old = plots.plot_density(collect([path]), tmp_path / "old", formats=("png",)).figures[0]
    new = plots.plot_density(collect([members[0]]), tmp_path / "new", formats=("png",)).figures[0]
    assert len(old.axes[0].lines) == len(new.axes[0].lines) == 3
    for before, now in zip(old.axes[0].lines, new.axes[0].lines):
        np.testing.assert_array_equal(before.get_xydata(), now.get_xydata())


def test_a_partial_old_density_is_measured_again_and_never_mixed_with_the_new(members, tmp_path, monkeypatch):
    path = fresh_copy(members, tmp_path)
    # old rows from another CPU: values told apart from the new ones, places an ulp off
    rows = [{**row, "value": 2 * row["value"], "eigenvalue": math.nextafter(row["eigenvalue"], math.inf)}
            for row in members[1]]
    store(path, [row for row in rows if row["scope"] != "member-0" or row["grid_index"] < 4], before_grid_indices=True)
    calls = counting(monkeypatch, landscape.hessian, "hessian_spectral_density")
    (again,) = measurements.measure_hessian([path], **DENSITY)
    assert len(calls) == 1 and again.computed == ("member-0:hessian/density",)
    assert [row["grid_index"] for row in again.rows] == list(range(5))
    (third,) = measurements.measure_hessian([path], **DENSITY)  # 4 old + 5 new rows: the new ones are whole
    assert len(calls) == 1 and third.computed == ()
    figure = plots.plot_density(collect([path]), tmp_path, formats=("png",)).figures[0]
    curves = {line.get_label(): line.get_xydata() for line in figure.axes[0].lines}
    np.testing.assert_array_equal(curves["member-0"], [[row["eigenvalue"], row["value"]] for row in again.rows])
    np.testing.assert_array_equal(curves["member-1"], [[row["eigenvalue"], row["value"]] for row in rows
                                                       if row["scope"] == "member-1"])  # whole old rows


def test_a_whole_old_plane_is_reused_and_a_partial_one_measured_again(members, tmp_path, monkeypatch):
    path = fresh_copy(members, tmp_path)
    plane = [row for row in members[2] if row["metric"].startswith("plane/")]
    store(path, plane, before_grid_indices=True)
    calls = counting(monkeypatch, landscape.connectivity, "plane")
    options = dict(alphas=21, plane=True, grid=2, **PATHS)
    measurements.measure_connectivity([path], **options)
    assert len(calls) == 0
    shutil.rmtree(path / run_folder.RESULTS_DIR)
    store(path, plane[2:], before_grid_indices=True)  # the first point's loss and accuracy missing
    (again,) = measurements.measure_connectivity([path], **options)
    assert len(calls) == 1 and "plane" in again.computed
    assert [(row["u_index"], row["v_index"]) for row in again.rows
            if row["scope"] == "ensemble" and row["metric"].startswith("plane/")] == \
        [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]
    (third,) = measurements.measure_connectivity([path], **options)
    assert len(calls) == 1 and third.computed == ()


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
        run_folder.append_results(path, [{**density_row(index, index + shift, value=n_iters), "n_iters": n_iters,
                                          "grid": grid} for index in range(grid)])
    figure = plots.plot_density(collect([path]), tmp_path, formats=("png",)).figures[0]
    (line,) = figure.axes[0].lines
    np.testing.assert_array_equal(line.get_xydata(), [[index + 0.1, 6] for index in range(5)])
