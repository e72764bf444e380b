"""A model's own input stage (ensembles.models.inputs): resizing and normalization inside the model
equal a hand-normalised forward, and a run that normalises inside the model gets pixels once."""
import pytest
import torch
import torch.nn.functional as F

import landscape.hessian
from ensembles.data import datasets
from ensembles.models import zoo
from ensembles.models.inputs import ModelInput
from ensembles.runs import run_folder
from tiny_runs import invoke


ONE_TINY_EPOCH = ("--epochs", 1, "--seeds", 1, "--train-samples", 16, "--batch-size", 8, "--device", "cpu")


def ok(*arguments):
    result = invoke(*arguments)
    assert result.exit_code == 0, result.output
    return result


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
       "--out", run, *ONE_TINY_EPOCH)
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
