"""Checkpoint files of freshly built zoo models and run folders imported from them, with the
commands the tests of damaged and refused inputs run on them. Test modules import it by name
(``from imported_runs import checkpoint``): tests/conftest.py puts tests/ on the path."""
from pathlib import Path

import torch
from click.testing import CliRunner

import cli
from ensembles.models.zoo import build


def checkpoint(path: Path, seed: int) -> Path:
    """A small_cnn state dict saved with torch.save at ``path`` (weights drawn with ``seed``)."""
    torch.manual_seed(seed)
    torch.save(build("small_cnn", 10).state_dict(), path)
    return path


def import_args(out, *files, sets=()):
    """The arguments of `sharpdiv import` of small_cnn members on digits from ``files`` into ``out``."""
    return ["import", "--model", "small_cnn", "--num-classes", "10", "--data", "digits",
            *[a for s in sets for a in ("--set", s)], out, *files]


def evaluate(run_path):
    """`sharpdiv evaluate` of ``run_path`` on the clean data, on the CPU."""
    return CliRunner().invoke(cli.main, ["evaluate", str(run_path), "--corruptions", "none", "--device", "cpu"])
