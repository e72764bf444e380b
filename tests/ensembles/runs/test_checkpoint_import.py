"""Importing checkpoints into a run folder (ensembles.runs.checkpoint_import, `sharpdiv import`):
every foreign checkpoint layout imports to identical weights; a pickle that carries code is refused
without running; refused settings, files and non-finite weights are one line, and a refused or
killed import leaves no output and no staging folder behind."""
import math
import os
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

import cli
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from ensembles.runs.checkpoint_import import import_checkpoints
from landscape.errors import InputError

from imported_runs import checkpoint, import_args
from tiny_runs import invoke, one_error_line, refused


def reference_network(seed):
    torch.manual_seed(seed)
    network = build("small_cnn", 10)
    for buffer in network.buffers():
        if buffer.dtype.is_floating_point:
            buffer.add_(torch.rand_like(buffer))
    return network


def layouts(network):
    state = network.state_dict()
    return {
        "plain.pt": state,
        "state_dict.pth": {"epoch": 7, "state_dict": state, "best_acc": 93.5,
                           "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        "model.pt": {"model": state, "epoch": 3},
        "last.pt": {"last": state, "best": state},
        "dataparallel.pt": {"state_dict": {f"module.{k}": v for k, v in state.items()}},
    }


def assert_same_weights(expected, actual):
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


@pytest.mark.parametrize("layout", ["plain.pt", "state_dict.pth", "model.pt", "last.pt", "dataparallel.pt"])
def test_each_layout_imports_to_identical_weights(tmp_path, layout):
    network = reference_network(1)
    torch.save(layouts(network)[layout], tmp_path / layout)
    import_checkpoints(tmp_path / "run", [tmp_path / layout], model="small_cnn", num_classes=10,
                       dataset="cifar10")
    assert_same_weights(network.state_dict(), run_folder.load_run(tmp_path / "run").members[0].state_dict())


def test_sharpbalance_release_layout_records_seeds(tmp_path):
    networks = {seed: reference_network(seed) for seed in (13, 17, 27)}
    files = []
    for seed, network in networks.items():
        folder = tmp_path / "release" / f"seed_{seed}"
        folder.mkdir(parents=True)
        torch.save({"epoch": 200, "state_dict": network.state_dict(), "best_acc": torch.tensor(95.1),
                    "optimizer": {"state": {}, "param_groups": []}}, folder / "model_best.pth.tar")
        files.append(folder / "model_best.pth.tar")
    result = CliRunner().invoke(cli.main, ["import", "--model", "small_cnn", "--num-classes", "10",
                                           "--data", "cifar10", "--set", "method=sharpbalance",
                                           "--set", "rho=0.2", "--set", "k=0.4",
                                           str(tmp_path / "run"), *map(str, files)])
    assert result.exit_code == 0, result.output
    run = run_folder.load_run(tmp_path / "run")
    assert run.config["seeds"] == [13, 17, 27]
    assert run.config["method"] == "sharpbalance" and run.config["rho"] == 0.2 and run.config["k"] == 0.4
    assert [m["seed"] for m in run.config["members"]] == [13, 17, 27]
    for member, seed in zip(run.members, (13, 17, 27)):
        assert_same_weights(networks[seed].state_dict(), member.state_dict())


def test_safetensors_files_import(tmp_path):
    network = reference_network(2)
    safetensors.torch.save_file(network.state_dict(), str(tmp_path / "w.safetensors"))
    import_checkpoints(tmp_path / "run", [tmp_path / "w.safetensors"], model="small_cnn",
                       num_classes=10, dataset="cifar10")
    assert_same_weights(network.state_dict(), run_folder.load_run(tmp_path / "run").members[0].state_dict())


class _Payload:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_carrying_pickle_is_refused_its_payload_never_runs_and_nothing_is_written(tmp_path):
    marker = tmp_path / "payload-ran"
    good = tmp_path / "good.pt"
    evil = tmp_path / "evil.pt"
    torch.save(reference_network(3).state_dict(), good)
    torch.save({"state_dict": reference_network(3).state_dict(), "extra": _Payload(str(marker))}, evil)
    assert not marker.exists()
    result = CliRunner().invoke(cli.main, ["import", "--model", "small_cnn", "--num-classes", "10",
                                           "--data", "cifar10", str(tmp_path / "out"), str(good), str(evil)])
    assert result.exit_code == 2
    assert "refused" in result.output and "evil.pt" in result.output
    assert "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(tmp_path)) == ["evil.pt", "good.pt"]  # no staging folder left behind


def test_checkpoint_that_does_not_fit_names_the_keys(tmp_path):
    torch.save(build("small_cnn", 100).state_dict(), tmp_path / "c100.pt")
    with pytest.raises(InputError, match="does not fit --model small_cnn") as error:
        import_checkpoints(tmp_path / "run", [tmp_path / "c100.pt"], model="small_cnn",
                           num_classes=10, dataset="cifar10")
    assert "shape" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_dict_without_weights_is_named(tmp_path):
    torch.save({"epoch": 3, "note": "no weights here"}, tmp_path / "x.pt")
    with pytest.raises(InputError, match="no model weights found"):
        import_checkpoints(tmp_path / "run", [tmp_path / "x.pt"], model="small_cnn", num_classes=10,
                           dataset="cifar10")


def test_import_refuses_to_overwrite_a_run(tmp_path):
    torch.save(reference_network(4).state_dict(), tmp_path / "a.pt")
    import_checkpoints(tmp_path / "run", [tmp_path / "a.pt"], model="small_cnn", num_classes=10, dataset="cifar10")
    with pytest.raises(InputError, match="already exists"):
        import_checkpoints(tmp_path / "run", [tmp_path / "a.pt"], model="small_cnn", num_classes=10,
                           dataset="cifar10")


def test_a_file_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("not a checkpoint")
    result = CliRunner().invoke(cli.main, ["import", "--model", "small_cnn", "--num-classes", "10", "--data", "digits",
                                           str(tmp_path / "run"), str(tmp_path / "readme.txt")])
    assert result.exit_code == 2 and "is not a checkpoint" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_import_refuses_an_unknown_dataset(tmp_path):
    result = CliRunner().invoke(cli.main, ["import", "--model", "small_cnn", "--num-classes", "10", "--data", "imagenet",
                                           str(tmp_path / "run"), str(tmp_path / "x.pt")])
    assert result.exit_code == 2 and "unknown dataset 'imagenet'" in result.output


@pytest.fixture
def checkpoints(tmp_path):
    return [checkpoint(tmp_path / f"m{i}.pt", i) for i in range(2)]


# ----------------------------------------------------------------------------------------------
# refused imports: one line, nothing written, no staging folder left


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
# non-finite weights


def test_import_refuses_nan_and_inf_weights_naming_file_and_tensor(tmp_path):
    network = build("small_cnn", 10, width=4)
    name = next(n for n, t in network.state_dict().items() if t.is_floating_point() and t.dim() == 4)
    good = tmp_path / "good.pt"
    torch.save(network.state_dict(), good)
    for value, kind in ((math.nan, "NaN"), (-math.inf, "inf")):
        state = {n: t.clone() for n, t in network.state_dict().items()}
        state[name].view(-1)[5] = value
        file = tmp_path / f"bad-{kind}.pt"
        torch.save(state, file)
        out = tmp_path / f"run-{kind}"
        result = invoke("import", "--model", "small_cnn", "--width", 4, "--num-classes", 10, "--data", "digits",
                        out, good, file)
        refused(result, str(file), repr(name), kind, "1 of")
        assert not out.exists()  # all or nothing
    ok = invoke("import", "--model", "small_cnn", "--width", 4, "--num-classes", 10, "--data", "digits",
                tmp_path / "fine", good)
    assert ok.exit_code == 0, ok.output
