"""Any model by name (torchvision, timm, a user's factory), its own input size and
normalization inside the model, checkpoints of these models, and ``import sharpdiv``."""
import functools
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner

import cli
import landscape.hessian
from ensembles.data import datasets
from ensembles.models import zoo
from ensembles.models.inputs import ModelInput
from ensembles.runs import run_folder
from landscape.errors import InputError
from landscape.sharpness import worst_case_sharpness

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ("--epochs", 1, "--seeds", 1, "--train-samples", 16, "--batch-size", 8, "--device", "cpu")
SMALL_BUDGETS = {
    "evaluate": ("--corruptions", "none", "--batch-size", 64),
    "sharpness": ("--batch-size", 4, "--n-batches", 2, "--n-iters", 2),
    "hessian": ("--n-examples", 8, "--batch-size", 4, "--n-probes", 1),
}


def invoke(*arguments):
    return CliRunner().invoke(cli.main, [str(a) for a in arguments])


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
    ok("train", "--data", "digits", "--model", "torchvision:resnet18", "--out", run, *TINY)
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
    ok("train", "--data", "digits", "--model", "my_nets:make_net", "--model-arg", "hidden=5", "--out", run, *TINY,
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
    result = invoke("train", "--data", "digits", "--model", model, "--out", tmp_path / "run", *TINY,
                    "--trust-model-code")
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bad_model_arg_names_the_builder_and_writes_nothing(tmp_path):
    result = invoke("train", "--data", "digits", "--model", "torchvision:resnet18", "--model-arg", "depth=3",
                    "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 2 and "model 'torchvision:resnet18' has no option 'depth'" in result.output
    assert not (tmp_path / "run").exists()


def test_model_arg_values_parse_as_json():
    assert cli.model_settings(("a=1", "b=[2, 3]", "c=text", "d=0.5"), None, None, None) == (
        {"a": 1, "b": [2, 3], "c": "text", "d": 0.5}, None)
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        cli.model_settings(("novalue",), None, None, None)


# ----------------------------------------------------------------------------------------------
# input size and normalization inside the model


def test_input_stage_matches_a_hand_normalised_forward():
    torch.manual_seed(0)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    plain = zoo.build("torchvision:resnet18", 10).eval()
    staged = zoo.build("torchvision:resnet18", 10, model_input={"size": [64, 64], "mean": mean, "std": std}).eval()
    staged.load_state_dict(plain.state_dict())  # the unwrapped model's keys load unchanged
    assert list(staged.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in staged.named_parameters()] == [n for n, _ in plain.named_parameters()]
    pixels = torch.rand(3, 3, 32, 32)
    by_hand = F.interpolate(pixels, size=(64, 64), mode="bilinear", align_corners=False)
    by_hand = (by_hand - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(staged(pixels), plain(by_hand), atol=1e-6, rtol=1e-6)
    stage = ModelInput(size=[32, 32], mean=mean, std=std)
    assert torch.equal(stage(pixels), (pixels - stage.mean.float()) / stage.std.float())  # same size: no resizing


def test_a_run_that_normalises_inside_the_model_gets_pixels_once(tmp_path):
    """The sharpness row of a model with --mean/--std equals the measurement on [0, 1] pixels:
    the data pipeline must not normalise them a second time."""
    mean, std = ["0.3,0.3,0.3", "0.2,0.2,0.2"]
    run = tmp_path / "run"
    ok("train", "--data", "digits", "--model", "small_cnn", "--width", 4, "--mean", mean, "--std", std,
       "--out", run, *TINY)
    assert run_folder.read_config(run)["model_input"] == {"size": None, "mean": [0.3] * 3, "std": [0.2] * 3}
    assert not run_folder.data_normalized(run_folder.read_config(run))
    ok("hessian", run, "--n-examples", 8, "--batch-size", 4, "--n-probes", 2, "--seed", 3, "--device", "cpu")
    images = datasets.load_dataset("digits", split="train", normalize=False)
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))[:8]
    batches = [(images.batch(rows.numpy()), images.targets[rows]) for rows in chosen.split(4)]
    member = run_folder.load_run(run).members[0]
    direct = landscape.hessian.hessian_trace(member, F.cross_entropy, batches, n_probes=2,
                                             generator=torch.Generator().manual_seed(3))
    rows = run_folder.read_results(run)
    row = rows[(rows["metric"] == "hessian/trace") & (rows["scope"] == "member-0")].iloc[0]
    assert row["value"] == pytest.approx(direct.value, rel=1e-5)


def test_timm_defaults_come_from_its_data_config():
    pytest.importorskip("timm")
    model = zoo.build("timm:test_vit", 10)
    assert zoo.resolve_input("timm:test_vit", model) == {"size": [160, 160], "mean": [0.5] * 3, "std": [0.5] * 3}
    assert zoo.resolve_input("torchvision:resnet18", zoo.build("torchvision:resnet18", 10)) is None
    with pytest.raises(InputError, match="give both --mean and --std"):
        zoo.resolve_input("timm:test_vit", model, mean=[0.1, 0.1, 0.1])


# ----------------------------------------------------------------------------------------------
# checkpoints of these models


def test_mismatch_names_the_keys_and_the_architecture_the_file_looks_like(tmp_path):
    file = tmp_path / "r34.pt"
    torch.save(zoo.build("torchvision:resnet34", 10).state_dict(), file)
    result = invoke("import", "--model", "torchvision:resnet18", "--num-classes", 10, "--data", "digits",
                    tmp_path / "run", file)
    assert result.exit_code == 2
    assert "unexpected: layer1.2.conv1.weight (64, 64, 3, 3)" in result.output
    assert "look like torchvision:resnet34" in result.output
    with pytest.raises(InputError, match=r"look like a torchvision or timm ResNet|look like torchvision:resnet18"):
        zoo.load_weights(zoo.build("resnet18", 10), zoo.build("torchvision:resnet18", 10).state_dict())


# ----------------------------------------------------------------------------------------------
# import sharpdiv, python -m sharpdiv, the README's snippet


def test_sharpdiv_reexports_the_real_functions():
    import sharpdiv

    assert sharpdiv.worst_case_sharpness is worst_case_sharpness
    assert sharpdiv.read_results is run_folder.read_results
    for name in ("average_case_sharpness", "hessian_trace", "hessian_eigenvalues", "hessian_spectral_density",
                 "per_sample_fisher_trace", "disagreement_error_ratio", "expected_calibration_error",
                 "ensemble_improvement_rate", "loss_barrier", "train", "evaluate", "report"):
        assert name in sharpdiv.__all__ and callable(getattr(sharpdiv, name))


def test_every_sharpdiv_name_is_the_object_of_the_module_that_defines_it():
    import importlib

    import sharpdiv

    for name in sharpdiv.__all__:
        module, attribute = sharpdiv._EXPORTS[name]
        assert getattr(sharpdiv, name) is getattr(importlib.import_module(module), attribute or name), name


def test_import_sharpdiv_does_not_import_torch_and_python_m_runs_the_cli():
    check = subprocess.run([sys.executable, "-c", "import sys, sharpdiv; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "False"
    result = subprocess.run([sys.executable, "-m", "sharpdiv", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "Usage: sharpdiv" in result.stdout


def test_readme_from_python_snippet_runs(monkeypatch):
    section = README.read_text().split("## From Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) < 15
    assert "n_batches=100" in code
    images = datasets.load_dataset("digits", split="train")
    dataset = torch.utils.data.TensorDataset(images.batch(range(20)), images.targets[:20])
    code = code.replace("n_batches=100", "n_batches=2")  # a CPU-sized budget; the rest runs as written
    # a tiny torchvision ResNet (one block per stage) stands in for resnet18 to keep the test quick
    monkeypatch.setattr(torchvision.models, "resnet18", functools.partial(
        torchvision.models.resnet.ResNet, torchvision.models.resnet.BasicBlock, [1, 1, 1, 1]))
    namespace = {"dataset": dataset}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["result"].n_batches == 2 and math.isfinite(namespace["result"].value)


# ----------------------------------------------------------------------------------------------
# m-sharpness on any iterable of batches


def test_streamed_batches_equal_stacked_ones():
    torch.manual_seed(0)
    model = zoo.build("small_cnn", 10, width=4)
    batches = [(torch.rand(3, 3, 8, 8), torch.randint(0, 10, (3,))) for _ in range(5)]
    stacked = worst_case_sharpness(model, F.cross_entropy, batches, rho=0.1, n_iters=3, chunk_size=2)
    # a one-pass generator, longer than needed, taken chunk by chunk
    streamed = worst_case_sharpness(model, F.cross_entropy, (b for b in batches + batches), rho=0.1, n_iters=3,
                                    n_batches=5, chunk_size=2)
    assert streamed.n_batches == 5
    assert streamed.value == stacked.value and torch.equal(streamed.per_batch, stacked.per_batch)
    # and all batches at once equal chunks of two up to float32 rounding
    at_once = worst_case_sharpness(model, F.cross_entropy, batches, rho=0.1, n_iters=3, chunk_size=5)
    assert at_once.value == pytest.approx(stacked.value, rel=1e-4)
    with pytest.raises(InputError, match="ran out after 5"):
        worst_case_sharpness(model, F.cross_entropy, iter(batches), rho=0.1, n_iters=1, n_batches=6)


def test_sweep_accepts_library_models_and_model_args(tmp_path):
    from ensembles.studies.sweep import read_sweep

    file = tmp_path / "s.toml"
    file.write_text('[base]\ndataset = "digits"\nmodel = "torchvision:resnet18"\nepochs = 1\n'
                    '[base.model_args]\nzero_init_residual = true\n[grid]\nmethod = ["sgd"]\n')
    sweep = read_sweep(file)
    assert sweep.jobs[0].settings.model_args == {"zero_init_residual": True}
    file.write_text('[base]\ndataset = "digits"\nmodel = "../evil:x"\n')
    with pytest.raises(InputError, match="not a valid model"):
        read_sweep(file)


def test_robustness_feeds_pixels_to_a_model_that_normalises_itself(tmp_path):
    """AutoAttack's ε is in [0, 1] pixel space: with the normalization inside the model, the
    attacked model's clean accuracy is the member's own on raw pixels (not normalised twice)."""
    run = tmp_path / "run"
    ok("train", "--data", "digits", "--model", "small_cnn", "--width", 4, "--mean", "0.3,0.3,0.3",
       "--std", "0.2,0.2,0.2", "--out", run, *TINY)
    ok("robustness", run, "--norm", "linf", "--eps", 0.01, "--n-examples", 16, "--attacks", "apgd-ce",
       "--device", "cpu")
    images = datasets.load_dataset("digits", split="test", normalize=False)
    member = run_folder.load_run(run).members[0]
    with torch.no_grad():
        expected = (member(images.batch(range(16))).argmax(1) == images.targets[:16]).float().mean().item()
    rows = run_folder.read_results(run)
    clean = rows[(rows["metric"] == "clean_accuracy") & (rows["scope"] == "member-0")]["value"].item()
    assert clean == pytest.approx(expected)


def test_resume_rebuilds_the_same_library_model(tmp_path, monkeypatch):
    """--resume reads model, model_args and model_input back from run.json and finds them equal
    to the training state's own settings (no 'other settings' refusal)."""
    (tmp_path / "nets2.py").write_text(
        "from torch import nn\n"
        "def make(num_classes, hidden=8):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))\n")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    ok("train", "--data", "digits", "--model", "nets2:make", "--model-arg", "hidden=3", "--input-size", 16,
       "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--out", run, *TINY, "--trust-model-code")
    result = ok("train", "--resume", run, "--device", "cpu", "--trust-model-code")
    assert "member 0 (seed 1): 1 epochs" in result.output
    from ensembles.training.trainer import settings_of_run

    settings = settings_of_run(run)
    assert settings.model_args == {"hidden": 3}
    assert settings.model_input == {"size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}
