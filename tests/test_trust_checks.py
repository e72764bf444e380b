"""Outside ``landscape/``, one home for each small check (the integer check, the
corruption severities, DataParallel prefix stripping, eval mode, dtype and device)."""
import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ensembles.data import corruptions, datasets
from ensembles.models import checkpoints, zoo
from ensembles.studies import evaluation
from ensembles.training import trainer
from landscape._checks import positive_int
from landscape.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_an_integer_is_an_integral_type_and_whole_floats_are_refused():
    assert positive_int("n", np.int64(3)) == 3 and type(positive_int("n", np.int64(3))) is int
    for bad in (3.0, np.float64(2.0), 2.5, True, "3"):
        with pytest.raises(InputError, match="n must be an integer >= 1"):
            positive_int("n", bad)


@pytest.mark.parametrize("call, name", [
    (lambda: zoo.build("small_cnn", 10, width=0), "width"),
    (lambda: zoo.build("mlp", 0), "num_classes"),
    (lambda: evaluation.evaluate_runs([], combine="probs", n_bins=0, batch_size=8), "n_bins"),
    (lambda: evaluation.evaluate_runs([], combine="probs", n_bins=15, batch_size=2.0), "batch_size"),
    (lambda: corruptions.make_corrupted_split(np.zeros((1, 32, 32, 3), np.uint8), [0], ["fog"], chunk_size=0),
     "chunk_size"),
    (lambda: corruptions.make_corrupted_split(np.zeros((1, 32, 32, 3), np.uint8), [0], ["fog"], seed=-1), "seed"),
    (lambda: dataclasses.replace(_TINY, epochs=2.0), "epochs"),
    (lambda: dataclasses.replace(_TINY, td=0), "td"),
])
def test_every_integer_option_gets_the_same_one_line_refusal(call, name):
    with pytest.raises(InputError, match=rf"^{re.escape(name)}.* must be an integer >= [01], got "):
        call()


def test_numpy_integers_are_integers_everywhere():
    # the zoo refused them (isinstance int) while the trainer accepted them
    model = zoo.build("small_cnn", np.int64(3), width=np.int64(2))
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_the_severities_and_their_check_have_one_home():
    assert corruptions.SEVERITIES is datasets.SEVERITIES
    assert corruptions.check_severity is datasets.check_severity
    for bad in (0, 6, 2.0, True):
        with pytest.raises(InputError, match=r"severity must be an integer in 1\.\.5"):
            corruptions.corrupt(np.zeros((1, 32, 32, 3), np.uint8), "fog", bad)
    with pytest.raises(InputError, match=r"in 1\.\.5, got 7; e\.g\. --severities 1-5"):
        evaluation.evaluation_slices("digits", severities=[7])


def test_data_parallel_prefix_is_stripped_in_one_place():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    wrapped = {f"module.{name}": tensor + 1 for name, tensor in model.state_dict().items()}
    zoo.load_weights(model, wrapped)
    assert torch.equal(model[0].bias, wrapped["module.0.bias"])
    assert list(checkpoints.extract_state_dict({"state_dict": wrapped})) == ["0.weight", "0.bias"]
    # a model whose own names start with module. keeps the prefix; mixed keys are left alone
    holder = torch.nn.Module()
    holder.module = torch.nn.Linear(2, 2)
    assert list(checkpoints.without_data_parallel_prefix(holder.state_dict(), holder.state_dict())) \
        == ["module.weight", "module.bias"]
    assert "module.a" in checkpoints.without_data_parallel_prefix({"module.a": 1, "b": 2})


def test_accuracy_restores_each_submodule_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(3 * 8 * 8, 2))
    model[1].eval()  # frozen dropout inside a model in training mode
    images = np.zeros((4, 8, 8, 3), np.uint8)
    data = datasets.ImageDataset(images, np.array([0, 1, 0, 1]), name="toy", split="test", num_classes=2,
                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    trainer.accuracy(model, data, torch.device("cpu"), batch_size=2)
    assert model.training and model[0].training and not model[1].training


def test_no_copy_of_a_shared_check_remains_outside_landscape():
    copies = {
        "must be a positive integer": "landscape._checks.positive_int",
        'startswith("module.")': "ensembles.models.checkpoints.without_data_parallel_prefix",
        "SEVERITIES = (": "ensembles.data.datasets.SEVERITIES",
        "was_training = ": "landscape._checks.evaluation_mode",
    }
    sources = [ROOT / "cli.py", *sorted((ROOT / "reports").rglob("*.py")), *sorted((ROOT / "ensembles").rglob("*.py"))]
    allowed = {("must be a positive integer", "datasets.py"),  # Batches: owned by the augmentation change
               ("SEVERITIES = (", "datasets.py")}
    found = [f"{path.relative_to(ROOT)}: {text!r} (use {home})" for path in sources
             for text, home in copies.items()
             if text in path.read_text() and (text, path.name) not in allowed
             and path.name != "measurements.py"]  # measurements' checks move with the measurement skeleton
    assert not found, found


_TINY = trainer.TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sharpbalance", seeds=(3, 5),
                                 rho=0.1, k=0.3, td=1, reselect_every=1, epochs=3, lr=0.05, batch_size=32,
                                 train_samples=96, score_chunk_size=32)


def test_pytest_runs_the_docstring_examples_of_the_packages():
    import configparser
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    pytest_section = config["tool:pytest"]
    assert "--doctest-modules" in pytest_section["addopts"].split()
    assert {"tests", "landscape", "ensembles", "reports"} <= set(pytest_section["testpaths"].split())
    assert "benchmarks" not in pytest_section["testpaths"]  # scripts that parse sys.argv when imported
