"""Damaged inputs, a bad `import` and what the file system refuses end in
one line on stderr and exit status 2, never a traceback, and leave nothing half-written behind."""
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

import cli
from ensembles.runs import run_folder
from ensembles.runs.checkpoint_import import import_checkpoints
from ensembles.runs.logit_cache import DataSlice, cache_folder
from ensembles.models.zoo import build


def checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(build("small_cnn", 10).state_dict(), path)
    return path


@pytest.fixture
def checkpoints(tmp_path):
    return [checkpoint(tmp_path / f"m{i}.pt", i) for i in range(2)]


@pytest.fixture
def run(tmp_path, checkpoints):
    return import_checkpoints(tmp_path / "run", checkpoints, model="small_cnn", num_classes=10, dataset="digits")


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


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


def evaluate(run_path):
    return invoke("evaluate", run_path, "--corruptions", "none", "--device", "cpu")


# ----------------------------------------------------------------------------------------------
# run.json


@pytest.mark.parametrize("damage, field", [
    (lambda c: [c], "list"),
    (lambda c: {k: v for k, v in c.items() if k != "num_classes"}, "'num_classes'"),
    (lambda c: {**c, "num_classes": "ten"}, "'num_classes'"),
    (lambda c: {k: v for k, v in c.items() if k != "dataset"}, "'dataset'"),
    (lambda c: {**c, "dataset": 10}, "'dataset'"),
    (lambda c: {k: v for k, v in c.items() if k != "model"}, "'model'"),
    (lambda c: {**c, "model": ["small_cnn"]}, "'model'"),
    (lambda c: {k: v for k, v in c.items() if k != "model_args"}, "'model_args'"),
    (lambda c: {**c, "model_args": [32]}, "'model_args'"),
    (lambda c: {k: v for k, v in c.items() if k != "members"}, "'members'"),
    (lambda c: {**c, "members": {"0": "done"}}, "'members'"),
    (lambda c: {**c, "members": [1, 2]}, "members[0]"),
], ids=["list", "no-num_classes", "text-num_classes", "no-dataset", "number-dataset", "no-model", "list-model",
        "no-model_args", "list-model_args", "no-members", "dict-members", "int-members"])
def test_damaged_run_json_is_one_line_naming_file_and_field(run, damage, field):
    config = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(damage(config)))
    line = one_error_line(evaluate(run))
    assert str(run / "run.json") in line and field in line


def test_a_valid_run_json_still_reads(run):
    assert run_folder.read_config(run)["num_classes"] == 10


# ----------------------------------------------------------------------------------------------
# member weights and the logit cache


@pytest.mark.parametrize("damage", [lambda data: data[:len(data) // 2], lambda data: b"\x07garbage" * 64],
                         ids=["truncated", "garbage"])
def test_damaged_member_weights_name_the_file_and_the_fix(run, damage):
    member = run_folder.member_path(run, 1)
    member.write_bytes(damage(member.read_bytes()))
    line = one_error_line(evaluate(run))
    assert str(member) in line and "re-import" in line and "retrain" in line


def test_a_folder_where_a_cache_file_belongs_is_one_line(run):
    blocker = cache_folder(run, DataSlice("digits", "val")) / "member-0.safetensors"
    blocker.mkdir(parents=True)
    line = one_error_line(evaluate(run))
    assert str(blocker) in line and "folder" in line


def test_a_file_where_a_cache_folder_belongs_is_one_line(run):
    blocker = cache_folder(run, DataSlice("digits", "val"))
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    line = one_error_line(evaluate(run))
    assert str(blocker) in line


# ----------------------------------------------------------------------------------------------
# import


def import_args(out, *files, sets=()):
    return ["import", "--model", "small_cnn", "--num-classes", "10", "--data", "digits",
            *[a for s in sets for a in ("--set", s)], out, *files]


def test_import_into_a_file_is_one_line(tmp_path, checkpoints):
    out = tmp_path / "taken"
    out.write_text("mine")
    line = one_error_line(invoke(*import_args(out, *checkpoints)))
    assert str(out) in line and "is a file" in line
    assert out.read_text() == "mine"


@pytest.mark.parametrize("assignment, option", [("dataset=cifar10", "--data"), ("num_classes=100", "--num-classes"),
                                                ("model=resnet18", "--model"), ('model_args={"width":8}', "--width"),
                                                ("format=7", "itself"), ("members=[]", "itself")])
def test_import_refuses_settings_its_options_own(tmp_path, checkpoints, assignment, option):
    line = one_error_line(invoke(*import_args(tmp_path / "out", *checkpoints, sets=[assignment])))
    assert assignment.split("=")[0] in line and option in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("assignment, says", [("seeds=1,1", "repeats seed 1"), ("seeds=1,2,3", "3 seeds for 2"),
                                              ("seeds=7", "1 seeds for 2"), ("seeds=a,b", "whole numbers"),
                                              ("seeds=-1,2", "0 to 2^63-1"), ("seeds=1,9223372036854775808", "0 to 2^63-1"),
                                              ("keep=weird", "keep=weird")])
def test_import_validates_the_settings_it_reads(tmp_path, checkpoints, assignment, says):
    line = one_error_line(invoke(*import_args(tmp_path / "out", *checkpoints, sets=[assignment])))
    assert says in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m0.pt", "m1.pt"]


def test_import_seeds_must_agree_with_the_paths(tmp_path):
    files = []
    for seed in (13, 17):
        (tmp_path / f"seed_{seed}").mkdir()
        files.append(checkpoint(tmp_path / f"seed_{seed}" / "model_best.pth.tar", seed))
    line = one_error_line(invoke(*import_args(tmp_path / "out", *files, sets=["seeds=13,18"])))
    assert "seed 18" in line and "seed 17" in line
    result = invoke(*import_args(tmp_path / "out", *files, sets=["seeds=13,17", "keep=best"]))
    assert result.exit_code == 0, result.output
    config = run_folder.read_config(tmp_path / "out")
    assert config["seeds"] == [13, 17] and config["keep"] == "best"


def test_import_width_given_twice_is_refused(tmp_path, checkpoints):
    line = one_error_line(invoke("import", "--model", "small_cnn", "--num-classes", "10", "--data", "digits",
                                 "--width", "32", "--set", "width=16", tmp_path / "out", *checkpoints))
    assert "--width" in line


@pytest.mark.parametrize("second", ["same", "dotted", "symlink", "hardlink"])
def test_the_same_checkpoint_twice_is_refused(tmp_path, checkpoints, second):
    first = checkpoints[0]
    (tmp_path / "sub").mkdir()
    other = {"same": first, "dotted": tmp_path / "sub" / ".." / first.name, "symlink": tmp_path / "link.pt",
             "hardlink": tmp_path / "hard.pt"}[second]
    if second == "symlink":
        other.symlink_to(first)
    if second == "hardlink":
        os.link(first, other)
    line = one_error_line(invoke(*import_args(tmp_path / "out", first, checkpoints[1], other)))
    assert "same checkpoint file" in line and str(other) in line
    assert not (tmp_path / "out").exists()


KILLED_IMPORT = """
import sys, time
from ensembles.models import checkpoints
from ensembles.runs import checkpoint_import

def stall(path):  # the import has made its staging folder: say so, then wait to be killed
    print("staged", flush=True)
    time.sleep(3600)

checkpoints.read_checkpoint = stall
checkpoint_import.import_checkpoints(sys.argv[1], sys.argv[2:], model="small_cnn", num_classes=10, dataset="digits")
"""


def test_the_next_import_removes_the_staging_folder_of_a_killed_one(tmp_path, checkpoints):
    parent = tmp_path / "runs"
    parent.mkdir()
    child = subprocess.Popen([sys.executable, "-c", KILLED_IMPORT, str(parent / "old"), *map(str, checkpoints)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "staged"
    child.kill()
    child.wait()
    child.stdout.close()
    (staged,) = parent.iterdir()  # what the killed import left
    users = parent / ".old.keepme"  # a user's own hidden folder, named like a staging folder of "old"
    users.mkdir()
    result = invoke(*import_args(parent / "new", *checkpoints))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in parent.iterdir()) == sorted([users.name, "new"])


def test_staging_folders_of_imports_that_may_still_run_are_kept(tmp_path, checkpoints):
    """Removed only when surely over: on this machine with its process gone, or idle for a day."""
    from ensembles.runs.checkpoint_import import _host

    parent = tmp_path / "runs"
    parent.mkdir()
    alive = parent / f".a.sharpdiv-import-{_host()}-{os.getpid()}-abcd1234"
    elsewhere_old = parent / f".b.sharpdiv-import-another-machine-{os.getpid()}-abcd1234"
    elsewhere_new = parent / f".c.sharpdiv-import-another-machine-{os.getpid()}-efgh5678"
    alive_but_old = parent / f".d.sharpdiv-import-{_host()}-{os.getpid()}-ijkl9012"
    for folder in (alive, elsewhere_old, elsewhere_new, alive_but_old):
        folder.mkdir()
        (folder / "run.json").write_text("{}")
    two_days_ago = time.time() - 2 * 24 * 3600
    for folder in (elsewhere_old, alive_but_old):  # a pid reused by another process keeps a folder a day at most
        os.utime(folder, (two_days_ago, two_days_ago))
    result = invoke(*import_args(parent / "new", *checkpoints))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in parent.iterdir()) == sorted([alive.name, elsewhere_new.name, "new"])


def test_a_refused_import_leaves_no_staging_folder(tmp_path, checkpoints):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    one_error_line(invoke(*import_args(tmp_path / "out", *checkpoints, bad)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt", "m0.pt", "m1.pt"]


# ----------------------------------------------------------------------------------------------
# what the file system refuses: a read-only folder, a full disk


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


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
