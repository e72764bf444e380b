"""Any model by name (ensembles.models.external): torchvision:, timm: and a user's module:callable
train and measure end to end; unknown names and bad builder arguments are one line."""
import math
import sys

import pytest
import torch

from ensembles.runs import run_folder
from tiny_runs import invoke


ONE_TINY_EPOCH = ("--epochs", 1, "--seeds", 1, "--train-samples", 16, "--batch-size", 8, "--device", "cpu")


SMALL_BUDGETS = {
    "evaluate": ("--corruptions", "none", "--batch-size", 64),
    "sharpness": ("--batch-size", 4, "--n-batches", 2, "--n-iters", 2),
    "hessian": ("--n-examples", 8, "--batch-size", 4, "--n-probes", 1),
}


def ok(*arguments):
    result = invoke(*arguments)
    assert result.exit_code == 0, result.output
    return result


def measure_everything(run, *flags):
    """evaluate, sharpness and hessian with small budgets; every row finite."""
    for command, options in SMALL_BUDGETS.items():
        ok(command, run, *options, "--device", "cpu", *flags)
    rows = run_folder.read_results(run)
    for prefix in ("accuracy", "sharpness/worst", "hessian/trace"):
        chosen = rows[rows["metric"].str.startswith(prefix)]
        assert len(chosen) > 0, prefix
        assert chosen["value"].map(math.isfinite).all(), chosen
    return rows


# ----------------------------------------------------------------------------------------------
# the three routes, end to end on digits


def test_torchvision_resnet18_trains_and_measures(tmp_path):
    run = tmp_path / "tv"
    ok("train", "--data", "digits", "--model", "torchvision:resnet18", "--out", run, *ONE_TINY_EPOCH)
    config = run_folder.read_config(run)
    assert config["model"] == "torchvision:resnet18" and config["model_input"] is None
    member = run_folder.load_run(run).members[0]
    assert type(member).__module__ == "torchvision.models.resnet"
    measure_everything(run)


def test_timm_state_dict_imports_and_measures(tmp_path):
    timm = pytest.importorskip("timm")  # the test extra installs it
    network = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    file = tmp_path / "timm.pth"
    # a DataParallel-prefixed state dict inside a training checkpoint, as timm's train.py writes
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in network.state_dict().items()}}, file)
    run = tmp_path / "run"
    ok("import", "--model", "timm:test_resnet", "--input-size", 32, "--num-classes", 10, "--data", "digits",
       run, file)
    config = run_folder.read_config(run)
    # size from the option, normalization from timm's pretrained_cfg
    assert config["model_input"] == {"size": [32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}
    member = run_folder.load_run(run).members[0]
    for key, value in network.state_dict().items():
        assert torch.equal(member.state_dict()[key], value)
    measure_everything(run)


def test_user_factory_with_model_args(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(
        "from torch import nn\n"
        "def make_net(num_classes, hidden=8):\n"
        "    return nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(hidden, num_classes))\n")
    monkeypatch.chdir(tmp_path)  # imported from the current folder, like uvicorn's app:factory
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    run = tmp_path / "mine"
    ok("train", "--data", "digits", "--model", "my_nets:make_net", "--model-arg", "hidden=5", "--out", run, *ONE_TINY_EPOCH,
       "--trust-model-code")
    config = run_folder.read_config(run)
    assert config["model_args"] == {"hidden": 5}
    member = run_folder.load_run(run, trust_model_code=True).members[0]
    assert member[0].out_channels == 5  # every later command rebuilds the same module
    measure_everything(run, "--trust-model-code")


@pytest.mark.parametrize("model, message", [
    ("torchvision:resnet19", "unknown torchvision model 'resnet19' (did you mean resnet18"),
    ("no_such_module_here:make", "cannot import 'no_such_module_here'"),
    ("json:no_such_factory", "module 'json' has no 'no_such_factory'"),
    ("string:capwords", "must accept the keyword argument num_classes"),
])
def test_unknown_model_names_are_one_line(tmp_path, model, message):
    result = invoke("train", "--data", "digits", "--model", model, "--out", tmp_path / "run", *ONE_TINY_EPOCH,
                    "--trust-model-code")
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bad_model_arg_names_the_builder_and_writes_nothing(tmp_path):
    result = invoke("train", "--data", "digits", "--model", "torchvision:resnet18", "--model-arg", "depth=3",
                    "--out", tmp_path / "run", *ONE_TINY_EPOCH)
    assert result.exit_code == 2 and "model 'torchvision:resnet18' has no option 'depth'" in result.output
    assert not (tmp_path / "run").exists()
