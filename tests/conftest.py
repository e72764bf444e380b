"""Shared test settings: one thread per test process, so results are reproducible bit for bit
and the suite does not fight itself for the machine's two cores; the helper modules of tests/
importable by name from every test folder."""
import os
import sys
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")
# tests/ is a package (its subfolders mirror the source tree: tests/ensembles/studies/...), so pytest
# puts the repository root on the path; the shared helper modules here are imported by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fast_quickstart(tmp_path_factory):
    """``sharpdiv quickstart --fast`` run once for the session (its tests and the browser test of its
    report read it, never change it): the output folder and the click result."""
    from click.testing import CliRunner

    import cli

    out = tmp_path_factory.mktemp("quickstart")
    return out, CliRunner().invoke(cli.main, ["quickstart", "--fast", "--out", str(out), "--device", "cpu"])
