"""What the file system refuses (a read-only folder, a full disk) and damaged inputs end in one
line on stderr and exit status 2 (cli.file_system_error), never a traceback, and leave nothing
half-written behind; other errors still raise."""
import errno
import os
from pathlib import Path

import pytest
import safetensors.torch

from ensembles.runs.checkpoint_import import import_checkpoints

from imported_runs import checkpoint, evaluate, import_args
from tiny_runs import files_under, invoke, one_error_line


@pytest.fixture
def checkpoints(tmp_path):
    return [checkpoint(tmp_path / f"m{i}.pt", i) for i in range(2)]


@pytest.fixture
def run(tmp_path, checkpoints):
    return import_checkpoints(tmp_path / "run", checkpoints, model="small_cnn", num_classes=10, dataset="digits")


# ----------------------------------------------------------------------------------------------
# what the file system refuses: a read-only folder, a full disk


def refuse_inside(monkeypatch, folder: Path, error_number: int):
    """Make creating files and folders inside ``folder`` fail as the file system would (works as
    root too, where chmod does not stop writes)."""
    real_mkdir, real_open = os.mkdir, os.open

    def inside(path) -> bool:
        return Path(path).resolve().is_relative_to(folder.resolve())

    def mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(error_number, os.strerror(error_number), str(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path) and not os.path.exists(path):
            raise OSError(error_number, os.strerror(error_number), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


def test_a_read_only_run_folder_is_said_to_be_read_only(run, monkeypatch):
    before = files_under(run)
    refuse_inside(monkeypatch, run, errno.EACCES)
    line = one_error_line(evaluate(run))
    assert "read-only" in line and str(run) in line
    assert files_under(run) == before


def test_a_read_only_folder_to_import_into_is_said_to_be_read_only(tmp_path, checkpoints, monkeypatch):
    parent = tmp_path / "shared"
    parent.mkdir()
    refuse_inside(monkeypatch, parent, errno.EROFS)
    line = one_error_line(invoke(*import_args(parent / "out", *checkpoints)))
    assert "read-only" in line and str(parent) in line
    assert list(parent.iterdir()) == []


def test_a_full_disk_is_said_and_loses_nothing(run, monkeypatch):
    """The disk fills up half-way through writing a cache file: the command says so, the partial
    file is removed, and every file that was there is unchanged."""
    before = files_under(run)
    real_save = safetensors.torch.save_file

    def fill_the_disk(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as written:
            written.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(safetensors.torch, "save_file", fill_the_disk)
    line = one_error_line(evaluate(run))
    assert "no space left" in line and "Nothing was lost" in line
    assert files_under(run) == before  # no partial (temporary) file remains, nothing changed


def test_a_full_disk_during_import_leaves_no_staging_folder(tmp_path, checkpoints, monkeypatch):
    def full(*args, **kwargs):
        raise RuntimeError("failed to write: No space left on device (os error 28)")  # as safetensors wraps it

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    line = one_error_line(invoke(*import_args(tmp_path / "out", *checkpoints)))
    assert "no space left" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.pt", "m1.pt"]


def test_other_errors_still_raise(run, monkeypatch):
    """Only the file system's refusals become one line; a bug still shows its traceback."""
    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    result = evaluate(run)
    assert isinstance(result.exception, OSError) and result.exception.errno == errno.EIO
