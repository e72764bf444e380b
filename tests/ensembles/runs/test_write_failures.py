"""A write the file system refuses (a full disk, a quota, a file-size limit, a read-only file
system) ends every command in one line naming the file and the cause, exit status 2, with the
temporary file removed and nothing lost: the same command run again (or ``--resume``) finishes.

End to end, a file-size limit (``ulimit -f``, RLIMIT_FSIZE in a subprocess, SIGXFSZ ignored as
Python does, so the write fails with EFBIG) stops ``sharpness`` (pyarrow's writer),
``evaluate`` (safetensors) and ``train`` (torch's checkpoint writer) at tiny size."""
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from ensembles.runs.files import atomic_path
from tiny_runs import SMALL_BUDGETS, TINY_TRAINING, files_under, train_tiny

REPOSITORY = Path(cli.__file__).resolve().parent
EDQUOT = getattr(errno, "EDQUOT", 122)


def sharpdiv_with_file_size_limit(limit: int, *arguments, cwd: Path):
    """``python -m cli ARGUMENTS`` in a process that may write files of at most ``limit`` bytes."""
    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cli", *map(str, arguments)], cwd=cwd, env=environment,
                          preexec_fn=limited, capture_output=True, text=True, timeout=600)


def error_line(completed) -> str:
    """Exit status 2, no traceback, and one message: the error (besides progress bars, which a
    process without a terminal prints as they are, the error following the bar it interrupts)."""
    assert completed.returncode == 2, completed.stderr
    assert "Traceback" not in completed.stderr, completed.stderr
    said = [line[line.index("sharpdiv:"):] for line in completed.stderr.split("\n") if "sharpdiv:" in line]
    assert len(said) == 1 and said[0].startswith("sharpdiv: error: "), completed.stderr
    return said[0]


def temporary_files(folder: Path) -> list[str]:
    return [str(path) for path in folder.rglob("*.tmp")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("trained") / "run")


@pytest.mark.parametrize("command, limit, written", [
    ("sharpness", 2000, "results/part-"),
    ("evaluate", 1000, "logits/digits/val/labels.safetensors"),
])
def test_a_measurement_under_a_file_size_limit_says_which_file(trained, tmp_path, command, limit, written):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = files_under(run)
    line = error_line(sharpdiv_with_file_size_limit(limit, command, run, *SMALL_BUDGETS[command], "--device", "cpu",
                                                    cwd=tmp_path))
    assert f"cannot write {run}/{written}" in line
    assert "ulimit -f" in line and "Nothing was lost" in line
    assert temporary_files(run) == []
    assert {name: data for name, data in files_under(run).items() if name in before} == before
    rerun = sharpdiv_with_file_size_limit(resource.RLIM_INFINITY, command, run, *SMALL_BUDGETS[command],
                                          "--device", "cpu", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr


def test_training_under_a_file_size_limit_says_which_file_and_resumes(tmp_path):
    run = tmp_path / "run"
    line = error_line(sharpdiv_with_file_size_limit(20000, "train", *TINY_TRAINING, "--out", run, cwd=tmp_path))
    assert f"cannot write {run}/train/member-0.pt" in line and "ulimit -f" in line
    assert temporary_files(run) == []
    resumed = sharpdiv_with_file_size_limit(resource.RLIM_INFINITY, "train", "--resume", run, "--device", "cpu",
                                            cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (run / "member-0.safetensors").is_file()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG, errno.EROFS, EDQUOT])
@pytest.mark.parametrize("wrapped", ["oserror", "rust", "arrow"])
def test_a_refused_write_becomes_the_oserror_naming_the_target(tmp_path, code, wrapped):
    """However a library reports the refusal (an OSError, safetensors' "(os error N)", pyarrow's
    "[errno N]"), the caller gets the OSError of that errno naming the file it asked for."""
    target = tmp_path / "folder" / "table.parquet"
    target.parent.mkdir()
    target.write_bytes(b"old")
    refusal = {"oserror": OSError(code, os.strerror(code)),
               "rust": RuntimeError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})"),
               "arrow": OSError(f"Error writing bytes to file. Detail: [errno {code}] {os.strerror(code)}")}[wrapped]
    with pytest.raises(OSError) as raised:
        with atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise refusal
    assert raised.value.errno == code and raised.value.filename == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.parquet"] and target.read_bytes() == b"old"


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left"), (errno.EFBIG, "largest file"),
                                         (EDQUOT, "quota"), (errno.EROFS, "read-only")])
def test_each_refusal_is_one_line_naming_the_file_and_its_cause(tmp_path, code, cause):
    line = cli.file_system_error(OSError(code, os.strerror(code), str(tmp_path / "run" / "member-0.safetensors")))
    assert line is not None and "\n" not in line and cause in line
    assert str(tmp_path / "run") in line
