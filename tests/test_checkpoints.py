"""Every foreign checkpoint layout imports to identical weights; a pickle that carries code is
refused without running, and a refused import leaves no output."""
import os

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

import cli
from ensembles.runs import run_folder
from ensembles.runs.checkpoint_import import import_checkpoints
from ensembles.models.zoo import build
from landscape.errors import InputError


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
