"""Every stored number is tied to the data and the weights it came from.

- Rows and cached logits carry the fingerprint of their data: data regenerated with another seed
  (under another --data-path) is measured again, never answered from the old rows or logits, and
  an edited cached labels file is not trusted.
- Rows carry the weights digest taken when the weights were read: a member file replaced during a
  measurement stores nothing and the command exits 2.
- `sharpdiv corrupt` never mixes files of two generations (seeds) in one -C folder.
"""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import safetensors
import safetensors.torch
import torch
from click.testing import CliRunner

import cli
from disk_layouts import write_cifar10
from ensembles.data import datasets
from ensembles.runs import logit_cache, run_folder
from ensembles.data.corruptions import corrupt
from ensembles.models.zoo import build
from landscape import calibration, sharpness

PIXELS = 3 * 32 * 32


def make_run(path, dataset, n_members=2):
    """Linear members with random weights (different per member), so every image changes the logits."""
    run_folder.create_run(path, dataset=dataset, num_classes=10, model="mlp", model_args={"input_size": PIXELS, "hidden": []},
                    seeds=list(range(n_members)))
    for index in range(n_members):
        torch.manual_seed(index)
        run_folder.save_member(path, index, build("mlp", 10, input_size=PIXELS, hidden=[]))
    return path


def invoke(*arguments):
    return CliRunner().invoke(cli.main, [str(a) for a in arguments])


def member_accuracy(run, index, dataset):
    """Member ``index``'s accuracy on ``dataset``, computed here from its weights."""
    model = run_folder.load_run(run).members[run_folder.load_run(run).member_indices.index(index)]
    with torch.no_grad():
        predictions = model(dataset.batch(np.arange(len(dataset))))
    return float(calibration.accuracy(predictions, dataset.targets))


def stored(run, **where):
    table = run_folder.read_results(run, current_only=True)
    for column, value in where.items():
        table = table[table[column] == value]
    return table


# ----------------------------------------------------------------------------------------------
# data identity


def test_digits_c_regenerated_with_another_seed_is_evaluated_again(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    for root, seed in ((old, 0), (new, 1)):
        result = invoke("corrupt", "--data", "digits", "--out", root, "--corruptions", "gaussian_noise", "--seed", seed)
        assert result.exit_code == 0, result.output
    run = make_run(tmp_path / "run", "digits")
    first = invoke("evaluate", run, "--data-path", old, "--corruptions", "gaussian_noise", "--severities", "5")
    assert first.exit_code == 0, first.output

    second = invoke("evaluate", run, "--data-path", new, "--corruptions", "gaussian_noise", "--severities", "5")
    assert second.exit_code == 0, second.output
    # val and test are the same digits: stored; the regenerated corruption is not.
    assert "1 needed forward passes, 0 came from cached logits, 2 were already stored" in second.output

    images = datasets.load_corrupted("digits", new, "gaussian_noise", 5)
    digest = datasets.data_digest("digits", new, corruption="gaussian_noise", severity=5)
    assert digest != datasets.data_digest("digits", old, corruption="gaussian_noise", severity=5)
    rows = stored(run, scope="member-1", metric="accuracy", corruption="gaussian_noise")
    assert rows["data"].tolist() == [digest]  # the old data's row is superseded, hence stale
    assert rows["value"].tolist() == [member_accuracy(run, 1, images)]
    slice_ = logit_cache.DataSlice("digits", "test", "gaussian_noise", 5)
    with safetensors.safe_open(str(logit_cache.member_logits_path(run, slice_, 1)), framework="pt") as cached:
        assert cached.metadata()["data"] == digest
        model = run_folder.load_run(run).members[1]
        with torch.no_grad():
            torch.testing.assert_close(cached.get_tensor("logits"), model(images.batch(np.arange(len(images)))))


def test_cached_logits_of_other_data_are_computed_again(tmp_path):
    """Without stored rows (results deleted), the logit cache alone must notice the new data."""
    write_cifar10(tmp_path / "a", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "b", n_train=20, n_test=10, seed=1)
    run = make_run(tmp_path / "run", "cifar10")
    assert invoke("evaluate", run, "--data-path", tmp_path / "a", "--corruptions", "none").exit_code == 0
    shutil.rmtree(run / "results")
    result = invoke("evaluate", run, "--data-path", tmp_path / "b", "--corruptions", "none")
    assert result.exit_code == 0, result.output
    assert "2 needed forward passes, 0 came from cached logits" in result.output
    test = datasets.load_dataset("cifar10", tmp_path / "b", "test")
    assert stored(run, scope="member-0", metric="accuracy", split="test")["value"].tolist() == \
        [member_accuracy(run, 0, test)]


def test_an_edited_cached_labels_file_is_not_trusted(tmp_path):
    write_cifar10(tmp_path / "data", n_train=20, n_test=10, seed=0)
    run = make_run(tmp_path / "run", "cifar10")
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
    assert stored(run, scope="member-0", metric="accuracy", split="test")["value"].tolist() == \
        [member_accuracy(run, 0, test)]


def test_measurements_store_and_check_the_data_they_used(tmp_path):
    write_cifar10(tmp_path / "a", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "b", n_train=20, n_test=10, seed=1)
    run = make_run(tmp_path / "run", "cifar10")
    options = ["--batch-size", 5, "--n-batches", 2, "--n-iters", 2]
    first = invoke("sharpness", run, "--data-path", tmp_path / "a", *options)
    assert first.exit_code == 0 and "2 measured now" in first.output, first.output
    again = invoke("sharpness", run, "--data-path", tmp_path / "a", *options)
    assert again.exit_code == 0 and "0 measured now, 2 stored" in again.output, again.output
    other = invoke("sharpness", run, "--data-path", tmp_path / "b", *options)
    assert other.exit_code == 0 and "2 measured now" in other.output, other.output
    rows = stored(run, metric="sharpness/worst/l2/adaptive")
    assert set(rows["data"]) == {datasets.data_digest("cifar10", tmp_path / "b", "train")}
    assert len(rows) == 3  # member-0, member-1, ensemble mean: the rows of data a are stale


def test_rows_of_a_table_without_the_data_column_are_readable_but_never_reused(tmp_path):
    run = make_run(tmp_path / "run", "digits")
    row = {"scope": "member-0", "metric": "accuracy", "value": 0.5, "dataset": "digits", "split": "test"}
    run_folder.append_results(run, [row])
    part = next((run / run_folder.RESULTS_DIR).glob("part-*.parquet"))
    old = pd.read_parquet(part).drop(columns=["data"])  # as written before the column existed
    old.to_parquet(part, index=False)
    table = run_folder.read_results(run, current_only=True)
    assert table["value"].tolist() == [0.5] and table["data"].isna().all()  # reports still see it
    digest = datasets.data_digest("digits", split="test")
    assert run_folder.find_results(run, {}, digest, scope="member-0").empty
    assert run_folder.find_results(run, {}, scope="member-0").empty
    run_folder.append_results(run, [{**row, "value": 0.75, "data": digest}])
    assert run_folder.find_results(run, {}, digest, scope="member-0")["value"].tolist() == [0.75]
    assert run_folder.read_results(run, current_only=True)["value"].tolist() == [0.75]  # the unknown-data row is stale


def test_data_digests_tell_apart_what_differs_and_only_that(tmp_path):
    write_cifar10(tmp_path / "a", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "copy", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "b", n_train=20, n_test=10, seed=1)
    digest = datasets.data_digest("cifar10", tmp_path / "a", "test")
    assert datasets.data_digest("cifar10", tmp_path / "copy", "test") == digest  # same bytes elsewhere
    assert datasets.data_digest("cifar10", tmp_path / "b", "test") != digest
    assert len({datasets.data_digest("cifar10", tmp_path / "a", split) for split in ("train", "val", "test")}) == 3
    assert datasets.data_digest("digits", split="val") != datasets.data_digest("digits", split="test")


# ----------------------------------------------------------------------------------------------
# weights read, weights stored


def test_a_member_replaced_during_a_measurement_stores_no_rows(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", n_train=20, n_test=10, seed=0)
    run = make_run(tmp_path / "run", "cifar10")
    original = sharpness.worst_case_sharpness

    def replacing(*arguments, **options):  # someone writes new weights while member 0 is measured
        torch.manual_seed(99)
        run_folder.save_member(run, 0, build("mlp", 10, input_size=PIXELS, hidden=[]))
        monkeypatch.setattr(sharpness, "worst_case_sharpness", original)
        return original(*arguments, **options)

    monkeypatch.setattr(sharpness, "worst_case_sharpness", replacing)
    result = invoke("sharpness", run, "--data-path", tmp_path / "data", "--batch-size", 5, "--n-batches", 2,
                    "--n-iters", 2)
    assert result.exit_code == 2, result.output
    assert "changed during the measurement" in result.output and "member-0.safetensors" in result.output
    assert sum("changed during the measurement" in line for line in result.output.splitlines()) == 1
    assert "Traceback" not in result.output
    assert run_folder.read_results(run).empty


def test_a_member_replaced_during_an_evaluation_stores_no_rows(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", n_train=20, n_test=10, seed=0)
    run = make_run(tmp_path / "run", "cifar10")
    original = logit_cache.compute_member_logits

    def replacing(*arguments, **options):
        torch.manual_seed(99)
        run_folder.save_member(run, 1, build("mlp", 10, input_size=PIXELS, hidden=[]))
        monkeypatch.setattr(logit_cache, "compute_member_logits", original)
        return original(*arguments, **options)

    monkeypatch.setattr(logit_cache, "compute_member_logits", replacing)
    result = invoke("evaluate", run, "--data-path", tmp_path / "data", "--corruptions", "none")
    assert result.exit_code == 2, result.output
    assert "changed during the" in result.output and "member-1.safetensors" in result.output
    assert run_folder.read_results(run).empty
    # The run is fine afterwards: the new weights are evaluated, the logits of the old ones are not reused.
    again = invoke("evaluate", run, "--data-path", tmp_path / "data", "--corruptions", "none")
    assert again.exit_code == 0, again.output
    test = datasets.load_dataset("cifar10", tmp_path / "data", "test")
    assert stored(run, scope="member-1", metric="accuracy", split="test")["value"].tolist() == \
        [member_accuracy(run, 1, test)]


def test_rows_carry_the_digest_taken_when_the_weights_were_read(tmp_path):
    run = make_run(tmp_path / "run", "digits")
    loaded = run_folder.load_run(run)
    torch.manual_seed(5)
    run_folder.save_member(run, 0, build("mlp", 10, input_size=PIXELS, hidden=[]))
    row = {"scope": "member-1", "metric": "accuracy", "value": 0.5, "data": "d"}
    run_folder.append_results(loaded, [row])  # member 1 did not change: stored
    try:
        run_folder.append_results(loaded, [{**row, "scope": "member-0"}])
    except Exception as error:  # noqa: BLE001 - the type is checked below
        assert type(error).__name__ == "InputError" and "changed during the measurement" in str(error)
    else:
        raise AssertionError("rows of replaced weights were stored")
    assert run_folder.read_results(run)["scope"].tolist() == ["member-1"]


# ----------------------------------------------------------------------------------------------
# one generation per -C folder


def test_corrupt_refuses_to_mix_seeds_in_one_folder(tmp_path):
    folder = tmp_path / "digits-C"
    assert invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise",
                  "--seed", 0).exit_code == 0
    before = (folder / "gaussian_noise.npy").read_bytes()
    result = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise,shot_noise",
                    "--seed", 1)
    assert result.exit_code == 2 and "seed 0" in result.output and "--force" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert (folder / "gaussian_noise.npy").read_bytes() == before and not (folder / "shot_noise.npy").exists()
    assert json.loads((folder / "sharpdiv-corrupt.json").read_text())["seed"] == 0

    # The same settings resume; --force regenerates everything with the new seed.
    same = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise,shot_noise",
                  "--seed", 0)
    assert same.exit_code == 0 and "kept 1" in same.output, same.output
    forced = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "gaussian_noise",
                    "--seed", 1, "--force")
    assert forced.exit_code == 0, forced.output
    assert datasets.available_corruptions("digits", tmp_path) == ["gaussian_noise"]  # no shot_noise of seed 0 left
    clean = datasets.load_dataset("digits", split="test", normalize=False)
    pixels = (clean.batch(np.arange(len(clean))) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    loaded = datasets.load_corrupted("digits", tmp_path, "gaussian_noise", 2, normalize=False)
    stored_pixels = (loaded.batch(np.arange(len(loaded))) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(stored_pixels, corrupt(pixels, "gaussian_noise", 2, seed=1))


def test_corrupt_refuses_a_folder_of_unknown_origin(tmp_path):
    folder = tmp_path / "digits-C"
    folder.mkdir()
    np.save(folder / "gaussian_noise.npy", np.zeros((5, 32, 32, 3), dtype=np.uint8))
    result = invoke("corrupt", "--data", "digits", "--out", tmp_path, "--corruptions", "fog")
    assert result.exit_code == 2 and "no record" in result.output, result.output
    assert not (folder / "fog.npy").exists() and not (folder / "labels.npy").exists()


def test_measurements_read_the_data_root_the_run_was_trained_on(tmp_path, monkeypatch):
    """Without --data-path, sharpness reads the run's own data (run.json data_path), as evaluate
    does, not the default root; --data-path still wins."""
    monkeypatch.setenv("SHARPDIV_DATA", str(tmp_path / "default"))
    write_cifar10(tmp_path / "default", n_train=20, n_test=10, seed=1)
    write_cifar10(tmp_path / "own", n_train=20, n_test=10, seed=0)
    run = make_run(tmp_path / "run", "cifar10")
    run_folder.update_config(run, data_path=str(tmp_path / "own"))
    options = ["--batch-size", 5, "--n-batches", 2, "--n-iters", 2]
    result = invoke("sharpness", run, *options)
    assert result.exit_code == 0, result.output
    assert set(stored(run, metric="sharpness/worst/l2/adaptive")["data"]) == \
        {datasets.data_digest("cifar10", tmp_path / "own", "train")}
    result = invoke("sharpness", run, "--data-path", tmp_path / "default", *options)
    assert result.exit_code == 0 and "2 measured now" in result.output, result.output
