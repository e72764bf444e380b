"""A run folder is data: reading one never runs code it names unless the user opts in.

A ``module.path:callable`` model imports and calls Python code; run folders are what people
exchange. Every command that builds a model from a run folder refuses such a model in one line
(exit 2, nothing written, nothing imported) unless ``--trust-model-code`` or
``SHARPDIV_TRUST_MODEL_CODE=1`` is given; torchvision and timm names must be entries of the
libraries' registries of classifiers, and no builder receives a keyword its signature does not name.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from ensembles.models import zoo
from ensembles.runs import run_folder
from landscape.errors import InputError
from tiny_runs import SMALL_BUDGETS, copy_run, files_under, invoke, one_error_line, train_tiny

COMMANDS = [(command, options) for command, options in SMALL_BUDGETS.items()] + [("train", ("--resume",))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("trained") / "run")


def payload(marker: Path) -> str:
    """Python source that leaves ``marker`` behind when it runs: on import and when called."""
    return (f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
            f"def make(num_classes, **kwargs):\n    pathlib.Path({str(marker)!r}).write_text('called')\n"
            "    raise SystemExit('called')\n")


def run_command(command, options, path, *extra):
    if command == "train":
        return invoke("train", *options, path, "--device", "cpu", *extra)
    return invoke(command, path, *options, "--device", "cpu", *extra)


@pytest.mark.parametrize("command, options", COMMANDS, ids=[c for c, _ in COMMANDS])
def test_a_module_in_the_working_folder_named_by_run_json_is_never_imported(trained, tmp_path, monkeypatch,
                                                                            command, options):
    marker = tmp_path / "ran"
    (tmp_path / "evilmod.py").write_text(payload(marker))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    monkeypatch.delenv("SHARPDIV_TRUST_MODEL_CODE", raising=False)
    run = copy_run(trained, tmp_path / "shared", model="evilmod:make", model_args={})
    settings = json.loads((run / "train" / "settings.json").read_text())  # what --resume compares with
    (run / "train" / "settings.json").write_text(json.dumps({**settings, "model": "evilmod:make"}))
    before = files_under(run)
    line = one_error_line(run_command(command, options, run))
    assert not marker.exists() and "evilmod" not in sys.modules
    assert "evilmod:make" in line and "--trust-model-code" in line and "SHARPDIV_TRUST_MODEL_CODE=1" in line
    assert files_under(run) == before


def test_torch_hub_with_a_payload_inside_the_shared_folder_is_never_loaded(trained, tmp_path, monkeypatch):
    """The payload sits in the folder itself (HUB/hubconf.py): nothing is needed in the working folder."""
    monkeypatch.delenv("SHARPDIV_TRUST_MODEL_CODE", raising=False)
    marker = tmp_path / "ran"
    run = copy_run(trained, tmp_path / "shared", model="torch.hub:load",
                   model_args={"repo_or_dir": str(tmp_path / "shared" / "HUB"), "model": "net", "source": "local",
                               "trust_repo": True})
    (run / "HUB").mkdir()
    (run / "HUB" / "hubconf.py").write_text(payload(marker).replace("def make", "def net"))
    before = files_under(run)
    line = one_error_line(invoke("evaluate", run, *SMALL_BUDGETS["evaluate"], "--device", "cpu"))
    assert "torch.hub:load" in line and "--trust-model-code" in line
    # Even trusted, torch.hub.load is no model builder: it does not take num_classes by name, so its
    # keyword arguments are never forwarded.
    trusted = one_error_line(invoke("evaluate", run, *SMALL_BUDGETS["evaluate"], "--device", "cpu",
                                    "--trust-model-code"))
    assert "must accept the keyword argument num_classes" in trusted
    assert not marker.exists() and files_under(run) == before


def test_the_users_own_factory_works_with_the_opt_in(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(
        "from torch import nn\n"
        "def make_net(num_classes, hidden: int = 8):\n"
        "    return nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(hidden, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "my_factories", raising=False)
    monkeypatch.delenv("SHARPDIV_TRUST_MODEL_CODE", raising=False)
    run = tmp_path / "mine"
    result = invoke("train", "--data", "digits", "--model", "my_factories:make_net", "--model-arg", "hidden=5",
                    "--epochs", 1, "--seeds", 1, "--train-samples", 16, "--batch-size", 8, "--device", "cpu",
                    "--out", run, "--trust-model-code")
    assert result.exit_code == 0, result.output
    assert "SHARPDIV_TRUST_MODEL_CODE" not in os.environ  # the opt-in ends with the command
    with pytest.raises(InputError, match="--trust-model-code"):
        run_folder.load_run(run)
    assert run_folder.load_run(run, trust_model_code=True).members[0][0].out_channels == 5
    result = invoke("evaluate", run, *SMALL_BUDGETS["evaluate"], "--device", "cpu", "--trust-model-code")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("SHARPDIV_TRUST_MODEL_CODE", "1")  # the environment variable the README names
    result = invoke("sharpness", run, *SMALL_BUDGETS["sharpness"], "--device", "cpu")
    assert result.exit_code == 0, result.output


def test_a_value_of_the_environment_variable_that_says_neither_is_refused(monkeypatch):
    monkeypatch.setenv("SHARPDIV_TRUST_MODEL_CODE", "maybe")
    with pytest.raises(InputError, match="SHARPDIV_TRUST_MODEL_CODE='maybe'"):
        zoo.build("json:loads", 3)


def test_library_models_are_classifiers_of_the_registry():
    # a detection model takes num_classes in another sense and fetches backbone weights by itself
    with pytest.raises(InputError, match="unknown torchvision model 'fasterrcnn_mobilenet_v3_large_320_fpn'"):
        zoo.build("torchvision:fasterrcnn_mobilenet_v3_large_320_fpn", 3)
    with pytest.raises(InputError, match="unknown torchvision model 'models.resnet18'"):
        zoo.build("torchvision:models.resnet18", 3)


def test_keys_a_builder_would_swallow_are_refused():
    # torchvision's MobileNetV3 takes **kwargs and ignores what it does not know
    with pytest.raises(InputError, match="model 'torchvision:mobilenet_v3_small' has no option 'depth'"):
        zoo.build("torchvision:mobilenet_v3_small", 3, depth=3)
    # the network class's own arguments still pass
    assert zoo.build("torchvision:mobilenet_v3_small", 3, dropout=0.5).classifier[2].p == 0.5


def test_timm_builder_keys_are_not_model_arguments(tmp_path):
    timm = pytest.importorskip("timm")  # the test extra installs it
    weights = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(timm.create_model("test_resnet", num_classes=3).state_dict(), str(weights))
    # create_model would load this file into the network; a model argument must be one of the network's
    with pytest.raises(InputError, match="model 'timm:test_resnet' has no option 'checkpoint_path'"):
        zoo.build("timm:test_resnet", 3, checkpoint_path=str(weights))
    assert zoo.build("timm:test_resnet", 3, drop_rate=0.25).drop_rate == 0.25


def test_a_trusted_factory_gets_only_the_arguments_it_names(tmp_path, monkeypatch):
    (tmp_path / "loose_factories.py").write_text(
        "from torch import nn\n"
        "def make(num_classes, **kwargs):\n"
        "    return nn.Linear(4, num_classes)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "loose_factories", raising=False)
    assert zoo.build("loose_factories:make", 3, trust_model_code=True).out_features == 3
    with pytest.raises(InputError, match="has no option 'anything'"):
        zoo.build("loose_factories:make", 3, trust_model_code=True, anything=1)


def test_import_and_sweep_run_build_code_only_with_the_opt_in(trained, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    (tmp_path / "evilmod.py").write_text(payload(marker))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    monkeypatch.delenv("SHARPDIV_TRUST_MODEL_CODE", raising=False)
    weights = tmp_path / "weights.pt"
    torch.save(zoo.build("small_cnn", 10).state_dict(), weights)
    line = one_error_line(invoke("import", "--model", "evilmod:make", "--num-classes", 10, "--data", "digits",
                                 tmp_path / "imported", weights))
    assert "--trust-model-code" in line and not (tmp_path / "imported").exists()
    sweep = tmp_path / "shared.toml"
    sweep.write_text('[base]\ndataset = "digits"\nmodel = "evilmod:make"\nepochs = 1\nseeds = [1]\n'
                     '[grid]\nmethod = ["sgd"]\n')
    line = one_error_line(invoke("sweep", "run", sweep, "--out", tmp_path / "root", "--device", "cpu"))
    assert "--trust-model-code" in line and not (tmp_path / "root").exists()
    assert not marker.exists()


def test_a_sweep_of_the_users_own_factory_runs_with_the_opt_in(tmp_path, monkeypatch):
    (tmp_path / "sweep_factories.py").write_text(
        "from torch import nn\n"
        "def make(num_classes, hidden: int = 8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, "sweep_factories", raising=False)
    monkeypatch.delenv("SHARPDIV_TRUST_MODEL_CODE", raising=False)
    sweep = tmp_path / "mine.toml"
    sweep.write_text('[base]\ndataset = "digits"\nmodel = "sweep_factories:make"\nepochs = 1\nseeds = [1]\n'
                     'train_samples = 16\nbatch_size = 8\n[base.model_args]\nhidden = 4\n[grid]\nmethod = ["sgd"]\n'
                     '[measure.evaluate]\ncorruptions = "none"\n')
    result = invoke("sweep", "run", sweep, "--out", tmp_path / "root", "--device", "cpu", "--no-report",
                    "--trust-model-code")
    assert result.exit_code == 0, result.output
    assert run_folder.read_results(tmp_path / "root" / "sgd-s1")["metric"].eq("accuracy").any()
