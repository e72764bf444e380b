"""The docstring examples run with the tests, and every measurement module of landscape/ keeps one."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLED_MODULES = ["checks", "calibration", "connectivity", "diversity", "ensemble", "fisher", "hessian", "hvp",
                    "perturbation", "robustness", "sharpness"]


@pytest.mark.parametrize("name", EXAMPLED_MODULES)
def test_every_measurement_module_keeps_a_runnable_example(name):
    import doctest
    import importlib

    module = importlib.import_module(f"landscape.{name}")
    examples = sum(len(test.examples) for test in doctest.DocTestFinder().find(module))
    assert examples > 0, f"landscape/{name}.py lost its runnable example"


def test_pytest_runs_the_docstring_examples_of_the_packages(request):
    # what pytest was configured with, wherever the configuration lives
    testpaths = set(request.config.getini("testpaths"))
    assert {"tests", "landscape", "ensembles", "reports"} <= testpaths
    assert "benchmarks" not in testpaths  # scripts that parse sys.argv when imported
    # and that configuration really collects a module's docstring examples as tests
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                                "landscape/checks.py"], cwd=ROOT, capture_output=True, text=True)
    assert "landscape/checks.py::landscape.checks" in collected.stdout.splitlines(), collected.stdout[-2000:]
