"""Cached logits (ensembles.runs.logit_cache): tied to the data they came from, never trusted when
edited, and a cache path taken by the wrong kind of entry is one line."""
import shutil

import pytest
import safetensors
import safetensors.torch
import torch

from ensembles.data import datasets
from ensembles.runs import logit_cache
from ensembles.runs.checkpoint_import import import_checkpoints
from ensembles.runs.logit_cache import DataSlice, cache_folder

from disk_layouts import write_cifar10
from imported_runs import checkpoint, evaluate
from measured_runs import make_linear_run, member_accuracy, stored_rows
from tiny_runs import invoke, one_error_line


@pytest.fixture
def checkpoints(tmp_path):
    return [checkpoint(tmp_path / f"m{i}.pt", i) for i in range(2)]


@pytest.fixture
def run(tmp_path, checkpoints):
    return import_checkpoints(tmp_path / "run", checkpoints, model="small_cnn", num_classes=10, dataset="digits")


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


def test_cached_logits_of_other_data_are_computed_again(tmp_path):
    """Without stored rows (results deleted), the logit cache alone must notice the new data."""
    write_cifar10(tmp_path / "a", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "b", n_train=20, n_test=10, seed=1)
    run = make_linear_run(tmp_path / "run", "cifar10")
    assert invoke("evaluate", run, "--data-path", tmp_path / "a", "--corruptions", "none").exit_code == 0
    shutil.rmtree(run / "results")
    result = invoke("evaluate", run, "--data-path", tmp_path / "b", "--corruptions", "none")
    assert result.exit_code == 0, result.output
    assert "2 needed forward passes, 0 came from cached logits" in result.output
    test = datasets.load_dataset("cifar10", tmp_path / "b", "test")
    assert stored_rows(run, scope="member-0", metric="accuracy", split="test")["value"].tolist() == \
        [member_accuracy(run, 0, test)]


def test_an_edited_cached_labels_file_is_not_trusted(tmp_path):
    write_cifar10(tmp_path / "data", n_train=20, n_test=10, seed=0)
    run = make_linear_run(tmp_path / "run", "cifar10")
    assert invoke("evaluate", run, "--data-path", tmp_path / "data", "--corruptions", "none").exit_code == 0
    shutil.rmtree(run / "results")
    slice_ = logit_cache.DataSlice("cifar10", "test")
    file = logit_cache.labels_path(run, slice_)
    with safetensors.safe_open(str(file), framework="pt") as cached:
        labels, metadata = cached.get_tensor("labels"), cached.metadata()
    # Every label moved to the next class, the file's metadata copied as it was.
    safetensors.torch.save_file({"labels": (labels + 1) % 10}, str(file), metadata=metadata)
    result = invoke("evaluate", run, "--data-path", tmp_path / "data", "--corruptions", "none")
    assert result.exit_code == 0, result.output
    assert any("sharpdiv: note:" in line and "edited after it was written" in line  # warnings show as notes
               for line in result.stderr.splitlines()), result.stderr
    test = datasets.load_dataset("cifar10", tmp_path / "data", "test")
    assert torch.equal(safetensors.torch.load_file(str(file))["labels"], test.targets)
    assert stored_rows(run, scope="member-0", metric="accuracy", split="test")["value"].tolist() == \
        [member_accuracy(run, 0, test)]
