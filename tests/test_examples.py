"""The docstring examples run with the tests, and every measurement module of landscape/ keeps one."""
from pathlib import Path

import pytest


# -- the docstring examples: pytest runs them (setup.cfg: --doctest-modules on the packages) -----------

EXAMPLED_MODULES = ["checks", "calibration", "connectivity", "diversity", "ensemble", "fisher", "hessian", "hvp",
                    "perturbation", "robustness", "sharpness"]


@pytest.mark.parametrize("name", EXAMPLED_MODULES)
def test_every_measurement_module_keeps_a_runnable_example(name):
    import doctest
    import importlib

    module = importlib.import_module(f"landscape.{name}")
    examples = sum(len(test.examples) for test in doctest.DocTestFinder().find(module))
    assert examples > 0, f"landscape/{name}.py lost its runnable example"


ROOT = Path(__file__).resolve().parents[1]


def test_pytest_runs_the_docstring_examples_of_the_packages():
    import configparser
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pytest_section = config["tool:pytest"]
    assert "--doctest-modules" in pytest_section["addopts"].split()
    assert {"tests", "landscape", "ensembles", "reports"} <= set(pytest_section["testpaths"].split())
    assert "benchmarks" not in pytest_section["testpaths"]  # scripts that parse sys.argv when imported
