"""The studies the report tests read, made once for all of tests/reports/ (package scope): the
tests only read them, so the modules share one copy instead of writing and rendering it each."""
import pytest

from ensembles.runs import run_folder
from reports.collect import collect, run_table
from reports.site import write_report

import results_fixtures as fixtures


@pytest.fixture(scope="package")
def small_study(tmp_path_factory):
    """Three runs with round numbers: a and b use sgd, c uses sam."""
    root = tmp_path_factory.mktemp("small")
    a = fixtures.make_run(root / "a", method="sgd", model_args={"input_size": 4, "hidden": [2], "width": 8})
    b = fixtures.make_run(root / "b", method="sgd")
    c = fixtures.make_run(root / "c", method="sam", rho=0.2, sparsity=0.5)
    fixtures.clean_and_corrupted(a, members=[0.80, 0.85, 0.90], ensemble=0.90, eir=0.30, der=0.40,
                                 corrupted={("fog", 1): ([0.70] * 3, 0.75), ("fog", 2): ([0.60] * 3, 0.62),
                                             ("snow", 1): ([0.50] * 3, 0.55), ("snow", 2): ([0.40] * 3, 0.50)})
    fixtures.clean_and_corrupted(b, members=[0.70, 0.70, 0.76], ensemble=0.80, eir=0.10, der=0.20,
                                 corrupted={("fog", 1): ([0.60] * 3, 0.65), ("fog", 2): ([0.50] * 3, 0.52),
                                             ("snow", 1): ([0.40] * 3, 0.45), ("snow", 2): ([0.30] * 3, 0.40)})
    fixtures.clean_and_corrupted(c, members=[0.90, 0.90, 0.90], ensemble=0.93, eir=0.50, der=0.25,
                                 corrupted={("fog", 1): ([0.80] * 3, 0.85), ("snow", 1): ([0.60] * 3, 0.61)})
    # Rows of another combine mode must not leak into the probs tables.
    fixtures.clean_and_corrupted(c, members=[0.90, 0.90, 0.90], ensemble=0.10, eir=0.90, der=0.90, corrupted={},
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


@pytest.fixture(scope="package")
def study(tmp_path_factory):
    """The nine-run study of results_fixtures.write_study, its run table and its rows."""
    root = tmp_path_factory.mktemp("study")
    paths = fixtures.write_study(root)
    runs = run_table(paths)
    return root, paths, runs, collect(paths, runs)


@pytest.fixture(scope="package")
def study_report(tmp_path_factory):
    """The whole report (PNG only) of the nine-run study and one run without rows."""
    root = tmp_path_factory.mktemp("study")
    paths = fixtures.write_study(root / "runs")
    empty = fixtures.make_run(root / "runs" / "unmeasured", method="sam")
    report = write_report([*paths, empty], root / "report", formats=("png",))
    return paths, empty, report
