"""The measurement skeleton (one shared loop for every ``measure_*``) keeps the rows of the code before it.

``measurement_rows_before_skeleton.json`` holds, for each call in ``CALLS``, the rows (every column
but ``value`` and ``stderr``) that the four ``measure_*`` functions wrote at commit d4e9826, before
they shared one skeleton, on a three-member digits run. The new code must write rows with those
keys (so tables written before still match), and rows with those keys stored in a run must be
reused: nothing is computed again, no landscape function is called.

Since then, connectivity also stores the pair connectivity q of each path and its mean over the
pairs: in a table written before, those rows are computed from the stored paths (no path is
measured again). And the rows of a computed grid are keyed by grid index, with their place (a density's
``eigenvalue``, a plane's ``u``, ``v``) in a location column: those places are computed from the
weights, so their last bits are one CPU's (the fixture's are those of the machine that wrote it)
and are compared nowhere here. Both kinds of rows are still reused.
"""
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

import landscape.connectivity
import landscape.fisher
import landscape.hessian
import landscape.sharpness
from ensembles.runs import run_folder
from ensembles.studies import measurements
from results_fixtures import append_as_before_grid_indices
from test_measurements import make_run

BEFORE = json.loads((Path(__file__).parent / "measurement_rows_before_skeleton.json").read_text())

CALLS = {
    "sharpness_worst": (measurements.measure_sharpness,
                        dict(rhos=(0.1, 0.2), m=4, n_batches=2, n_iters=2, seed=5)),
    "sharpness_average": (measurements.measure_sharpness,
                          dict(kind="average", norm="linf", adaptive=False, rhos=(0.01,), m=4, n_batches=2,
                               n_samples=3, exclude=["*.bias"], seed=5)),
    "hessian": (measurements.measure_hessian,
                dict(n_examples=16, batch_size=8, trace=True, eigenvalues=2, density=True, n_probes=3,
                     lanczos_steps=4, density_grid=5)),
    "fisher": (measurements.measure_fisher, dict(n_examples=12, batch_size=5, chunk_size=4)),
    "connectivity": (measurements.measure_connectivity,
                     dict(n_examples=10, alphas=3, plane=True, grid=2, bn_examples=8, batch_size=8)),
    "connectivity_nobn": (measurements.measure_connectivity,
                          dict(split="val", n_examples=10, alphas=3, bn_reset=False, batch_size=8)),
}
#: Tasks of each call: members x radii, members x (trace, eigenvalues, density), members, pairs (+ plane).
REUSED = {"sharpness_worst": 6, "sharpness_average": 3, "hessian": 9, "fisher": 3, "connectivity": 4,
          "connectivity_nobn": 3}
LANDSCAPE = [(landscape.sharpness, "worst_case_sharpness"), (landscape.sharpness, "average_case_sharpness"),
             (landscape.hessian, "hessian_trace"), (landscape.hessian, "hessian_eigenvalues"),
             (landscape.hessian, "hessian_spectral_density"), (landscape.fisher, "per_sample_fisher_trace"),
             (landscape.connectivity, "loss_barrier"), (landscape.connectivity, "plane")]


#: What a row measured rather than what identifies it, and the grid indices the rows have since.
MEASURED = ("value", "stderr", *run_folder.LOCATION_COLUMNS)
GRID_INDICES = ("grid_index", "u_index", "v_index")


def keys(rows):
    return [{name: value for name, value in row.items() if name not in MEASURED + GRID_INDICES} for row in rows]


def grid_indices(rows):
    """Per row, its grid indices (an empty tuple for a row off any computed grid)."""
    return [tuple(row[name] for name in GRID_INDICES if name in row) for row in rows]


def expected_grid_indices(rows, options):
    """Density rows count 0..G-1 per member; the plane's ensemble rows run over its grid in the
    order computed (loss, then accuracy, at each point); no other row has an index."""
    density = itertools.cycle((index,) for index in range(options.get("density_grid", 1)))
    grid = range(options.get("grid", 1))
    plane = itertools.cycle([(a, b) for a in grid for b in grid for _ in ("loss", "accuracy")])
    return [next(density) if row["metric"] == "hessian/density" else
            next(plane) if row["metric"].startswith("plane/") and row["scope"] == "ensemble" else ()
            for row in rows]


#: The location columns each metric on a computed grid has.
PLACES = {"hessian/density": ("eigenvalue",), "plane/loss": ("u", "v"), "plane/accuracy": ("u", "v")}


@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("skeleton") / "cnn", n_members=3)


@pytest.mark.filterwarnings("error::DeprecationWarning")  # landscape is called in its new convention
@pytest.mark.filterwarnings("ignore:Lanczos did not reach")
@pytest.mark.parametrize("name", list(CALLS))
def test_rows_have_the_keys_the_code_before_the_skeleton_wrote(name, run_path):
    measure, options = CALLS[name]
    (measurement,) = measure([run_path], **options)
    written = keys(measurement.rows)
    assert [row for row in written if row in keys(BEFORE[name])] == keys(BEFORE[name])
    assert grid_indices(measurement.rows) == expected_grid_indices(measurement.rows, options)
    assert all(math.isfinite(row[column]) for row in measurement.rows for column in PLACES.get(row["metric"], ()))
    # Since then the plane also stores its value at each member's position, and connectivity the q of
    # each pair and their means: new rows only.
    added = [row for row in written if row not in keys(BEFORE[name])]
    plane = [row for row in added if row["metric"].startswith("plane/") and row["scope"].startswith("member-")]
    assert len(plane) == (6 if options.get("plane") else 0)  # loss and accuracy at 3 members
    assert [(row["scope"], row["metric"]) for row in added if row not in plane] == \
        (Q_ROWS if name.startswith("connectivity") else [])
    assert all(math.isfinite(row["value"]) for row in measurement.rows)
    (again,) = measure([run_path], **options)  # and the new code reuses what it wrote
    assert again.rows == [] and again.computed == () and again.reused == measurement.computed


#: The q rows connectivity adds on this three-member run: per pair, then the means over the pairs.
Q_ROWS = [(scope, metric) for scope in ("pair-0-1", "pair-0-2", "pair-1-2")
          for metric in ("connectivity/q", "connectivity/q_loss")] + \
         [("ensemble", "connectivity/q_bar"), ("ensemble", "connectivity/q_loss_bar")]


def store_rows_of_the_code_before(path, name):
    """The rows the code before the skeleton wrote, with the current weights and placeholder values
    (1.0: a Fisher array of ones then matches its stored mean)."""
    rows = [{**row, "value": 1.0} for row in BEFORE[name]]
    append_as_before_grid_indices(path, rows, weights=run_folder.load_run(path).weights)
    if name == "fisher":
        for index in range(3):
            file = measurements.fisher_path(path, index, "train")
            file.parent.mkdir(exist_ok=True)
            np.save(file, np.ones(12, dtype=np.float32))


@pytest.mark.parametrize("name", list(CALLS))
def test_rows_written_before_the_skeleton_are_reused_without_computing(name, tmp_path, monkeypatch):
    path = make_run(tmp_path / "cnn", n_members=3)
    store_rows_of_the_code_before(path, name)
    for module, function in LANDSCAPE:
        monkeypatch.setattr(module, function, lambda *args, **kwargs: pytest.fail("a stored row was recomputed"))
    measure, options = CALLS[name]
    (measurement,) = measure([path], **options)
    assert measurement.computed == ()
    assert len(measurement.reused) == REUSED[name]
    assert measurement.summary()[0].startswith(f"{path.name}: ")
    # connectivity adds q from the stored paths (all 1.0 here: the path keeps its whole chord)
    added = [(row["scope"], row["metric"]) for row in measurement.rows]
    assert added == (Q_ROWS if name.startswith("connectivity") else [])
    assert all(row["value"] == 1.0 for row in measurement.rows)
    (again,) = measure([path], **options)
    assert again.rows == [] and again.computed == ()
