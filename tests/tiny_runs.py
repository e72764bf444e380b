"""End-to-end helpers: a tiny trained run folder, the ``sharpdiv`` command run in-process, and
what it left on disk. Test files in any folder under tests/ import them by module name
(``from tiny_runs import invoke, one_error_line``): tests/conftest.py puts tests/ on the path.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

import cli

#: One member of a width-4 small CNN, one epoch on 16 digits: a run folder in about a second.
TINY_TRAINING = ("--data", "digits", "--model", "small_cnn", "--width", 4, "--epochs", 1, "--seeds", 1,
                 "--train-samples", 16, "--batch-size", 8, "--device", "cpu")
#: Small budgets of the commands that read a run folder (no corrupted data needed).
SMALL_BUDGETS = {
    "evaluate": ("--corruptions", "none", "--batch-size", 64),
    "sharpness": ("--batch-size", 4, "--n-batches", 2, "--n-iters", 1),
    "hessian": ("--n-examples", 8, "--batch-size", 4, "--n-probes", 1),
    "fisher": ("--n-examples", 8, "--batch-size", 4),
    "robustness": ("--norm", "linf", "--eps", 0.01, "--n-examples", 4, "--attacks", "apgd-ce"),
}


def invoke(*arguments):
    """``sharpdiv ARGUMENTS`` in this process (the arguments as text)."""
    return CliRunner().invoke(cli.main, [str(a) for a in arguments])


def one_error_line(result) -> str:
    """The command failed with status 2 and showed exactly one line, no traceback. Progress bars
    are drawn and erased with carriage returns; what counts is what a terminal shows."""
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    shown = [line.rsplit("\r", 1)[-1] for line in result.stderr.split("\n")]
    shown = [line for line in shown if line.strip()]
    assert len(shown) == 1 and shown[0].startswith("sharpdiv: error: "), result.stderr
    assert "Traceback" not in result.output
    return shown[0]


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_tiny(out: Path, *extra) -> Path:
    """A tiny trained run folder at ``out``."""
    result = invoke("train", *TINY_TRAINING, "--out", out, *extra)
    assert result.exit_code == 0, result.output
    return out


def copy_run(source: Path, target: Path, **changes) -> Path:
    """A copy of the run folder ``source`` at ``target`` with ``changes`` to its run.json."""
    shutil.copytree(source, target)
    config = json.loads((target / "run.json").read_text())
    config.update(changes)
    (target / "run.json").write_text(json.dumps(config))
    return target
