"""Tiny run folders (digits CNNs, linear members on any dataset) and the documented data of the
measurement commands, for the tests of the measurements, their rows and the reports read from them.
Test modules import it by name (``from measured_runs import make_run``): tests/conftest.py puts
tests/ on the path."""
import json

import numpy as np
import torch

from ensembles.data import datasets
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from landscape import calibration

SMALL_CNN = {"width": 4}


def make_run(path, n_members=2, model="small_cnn", model_args=SMALL_CNN, seed=0):
    run_folder.create_run(path, dataset="digits", num_classes=10, model=model, model_args=model_args,
                    seeds=list(range(n_members)))
    torch.manual_seed(seed)
    for index in range(n_members):
        network = build(model, 10, **model_args)
        generator = torch.Generator().manual_seed(seed + index)
        for module in network.modules():  # running statistics a fresh network would not have
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
        run_folder.save_member(path, index, network)
    return path


def counting(monkeypatch, module, name):
    """Replace ``module.name`` with a wrapper that counts its calls."""
    calls = []
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def first_member(path, index=0):
    run = run_folder.load_run(path)
    return run.members[run.member_indices.index(index)]


SHARPNESS = ("--batch-size", 4, "--n-batches", 3, "--n-iters", 2, "--seed", 5)


def documented_batches(m, n_batches, seed):
    """Batches of the documented draw: order = randperm(N) with a generator seeded by seed."""
    images = datasets.load_dataset("digits", split="train")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:m * n_batches]
    return [(images.batch(rows.numpy()), images.targets[rows]) for rows in order.reshape(n_batches, m)]


CONNECTIVITY = ("--n-examples", 40, "--alphas", 3, "--bn-examples", 48, "--batch-size", 20, "--seed", 2,
                "--device", "cpu")


def make_seeded_run(path, n_members=3, seed=0):
    """Small CNN members, each drawn with ``seed + index``, whose batch norms hold running statistics
    a fresh network would not have."""
    run_folder.create_run(path, dataset="digits", num_classes=10, model="small_cnn", model_args={"width": 4},
                          seeds=list(range(n_members)))
    for index in range(n_members):
        torch.manual_seed(seed + index)
        network = build("small_cnn", 10, width=4)
        generator = torch.Generator().manual_seed(seed + index)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
        run_folder.save_member(path, index, network)
    return path


def barrier_rows(path):
    """The stored barrier rows of ``path`` with their alignment settings as columns."""
    table = run_folder.read_results(path, current_only=True)
    table = table[table["metric"] == "connectivity/barrier"]
    table = table.assign(**{key: [json.loads(text).get(key) for text in table["settings"]]
                            for key in ("alignment", "aligned_to", "align_seed", "align_examples")})
    return table.assign(alignment=table["alignment"].fillna("none"))  # unaligned rows carry no alignment


LINEAR_INPUT_SIZE = 3 * 32 * 32


def make_linear_run(path, dataset, n_members=2):
    """Linear members with random weights (different per member), so every image changes the logits."""
    run_folder.create_run(path, dataset=dataset, num_classes=10, model="mlp",
                          model_args={"input_size": LINEAR_INPUT_SIZE, "hidden": []}, seeds=list(range(n_members)))
    for index in range(n_members):
        torch.manual_seed(index)
        run_folder.save_member(path, index, build("mlp", 10, input_size=LINEAR_INPUT_SIZE, hidden=[]))
    return path


def member_accuracy(run, index, dataset):
    """Member ``index``'s accuracy on ``dataset``, computed here from its weights."""
    model = run_folder.load_run(run).members[run_folder.load_run(run).member_indices.index(index)]
    with torch.no_grad():
        predictions = model(dataset.batch(np.arange(len(dataset))))
    return float(calibration.accuracy(predictions, dataset.targets))


def stored_rows(run, **where):
    """The current rows of ``run`` whose columns hold the given values."""
    table = run_folder.read_results(run, current_only=True)
    for column, value in where.items():
        table = table[table[column] == value]
    return table
