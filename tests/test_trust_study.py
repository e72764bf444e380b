"""The quickstart as a study: augmentation per dataset, digits-C checked against an
independent reference classifier, and parallelism that never changes the numbers."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from ensembles import cpus
from ensembles.data import corruptions, datasets
from ensembles.runs import run_folder
from ensembles.studies import quickstart, sweep
from ensembles.training import trainer
from landscape.errors import InputError

# --- augmentation: one setting, chosen per dataset, recorded in run.json ---------------------------


def test_default_augmentation_is_none_for_digits_and_crop_flip_for_natural_images():
    assert datasets.default_augmentation("digits") == "none"
    for name in ("cifar10", "CIFAR-100", "tinyimagenet", "folder:/somewhere"):
        assert datasets.default_augmentation(name) == "crop-flip"
    assert trainer.TrainingSettings(dataset="digits", model="small_cnn").augmentation == "none"
    assert trainer.TrainingSettings(dataset="cifar10", model="small_cnn").augmentation == "crop-flip"
    chosen = trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation="crop")
    assert chosen.augmentation == "crop" and chosen.run_fields()["augmentation"] == "crop"
    with pytest.raises(InputError, match="unknown augmentation 'flip'; choose one of none, crop, crop-flip"):
        trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation="flip")


def test_the_training_split_gets_the_chosen_augmentation_and_crop_never_mirrors():
    for choice in ("none", "crop", "crop-flip"):
        settings = trainer.TrainingSettings(dataset="digits", model="small_cnn", augmentation=choice)
        data = trainer._load_data(settings)
        assert data.train.augmentation == choice and data.val.augmentation == "none"
    # A digit's crop is a shifted copy; with crop-flip some images come out mirrored.
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    for flip in (False, True):
        mirrored = 0
        for seed in range(20):
            out = datasets.random_crop_and_flip(images, padding=0, generator=torch.Generator().manual_seed(seed),
                                                flip=flip)
            mirrored += int(sum(not torch.equal(out[b], images[b]) for b in range(2)))
        assert (mirrored > 0) == flip


def test_train_records_the_augmentation_and_old_runs_resume_with_crop_flip(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli.main, ["train", "--data", "digits", "--model", "small_cnn", "--width", "2",
                                           "--epochs", "1", "--seeds", "1", "--batch-size", "32",
                                           "--train-samples", "32", "--out", str(out), "--device", "cpu",
                                           "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert run_folder.read_config(out)["augmentation"] == "none"  # digits' default, recorded
    result = CliRunner().invoke(cli.main, ["train", "--data", "digits", "--model", "small_cnn", "--width", "2",
                                           "--epochs", "1", "--seeds", "1", "--train-samples", "32",
                                           "--augmentation", "crop", "--out", str(tmp_path / "crop"),
                                           "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert run_folder.read_config(tmp_path / "crop")["augmentation"] == "crop"
    # A run.json from before the setting: every such run was trained with crop-flip.
    config = json.loads((out / "run.json").read_text())
    del config["augmentation"]
    (out / "run.json").write_text(json.dumps(config))
    assert trainer.settings_of_run(out).augmentation == "crop-flip"
    # ... and one from the while it was a boolean `augment`
    (out / "run.json").write_text(json.dumps({**config, "augment": False}))
    assert trainer.settings_of_run(out).augmentation == "none"


def test_a_sweep_sets_and_names_the_augmentation():
    text = """
name = "aug"
[base]
dataset = "digits"
model = "small_cnn"
seeds = [1, 2]
epochs = 2
[grid]
augmentation = ["none", "crop-flip"]
"""
    plan = sweep.parse_sweep(text)
    assert [job.name for job in plan.jobs] == ["sgd-none-s1.2", "sgd-crop_flip-s1.2"]
    assert [job.settings.augmentation for job in plan.jobs] == ["none", "crop-flip"]
    with pytest.raises(InputError, match="not a valid augmentation"):
        sweep.parse_sweep(text.replace('"crop-flip"]', '"mirror"]'))
    assert all(job.settings.augmentation == "none" for job in quickstart.quickstart_sweep().jobs)


# --- digits-C against an independent reference: a linear classifier fitted on clean digits -------------


@pytest.fixture(scope="module")
def reference():
    from sklearn.linear_model import LogisticRegression

    def pixels(split):
        data = datasets.load_dataset("digits", None, split, normalize=False)
        return data.array, data.targets.numpy()

    train_images, train_labels = pixels("train")
    test_images, test_labels = pixels("test")

    def features(images):
        return images[..., 0].reshape(len(images), -1) / 255.0

    model = LogisticRegression(max_iter=2000).fit(features(train_images), train_labels)
    return lambda images: model.score(features(images), test_labels), test_images


def test_every_digits_c_corruption_leaves_the_reference_above_chance_and_severity_orders_it(reference):
    """Chance is 10%; severity 1 must leave the reference far above it, and its accuracy may not
    rise with the severity by more than the noise of 360 test images (3 points)."""
    score, images = reference
    assert score(images) > 0.9
    for name in corruptions.corruption_names():
        accuracy = [score(corruptions.corrupt(images, name, severity, parameters="digits-c"))
                    for severity in datasets.SEVERITIES]
        assert accuracy[0] > 0.8, f"{name} at severity 1: {accuracy[0]:.3f}"
        rises = [later - earlier for earlier, later in zip(accuracy, accuracy[1:])]
        assert max(rises) <= 0.03, f"{name}: accuracy by severity {np.round(accuracy, 3)}"


def test_digits_c_blur_and_pixelate_act_on_the_glyphs(reference):
    """CIFAR-10-C's defocus radii (0.3-1.5 pixels) and pixelate sides (30-20 pixels) left the
    upscaled glyphs as they were (reference accuracy unchanged at severity 5); digits-C's cost it."""
    score, images = reference
    clean = score(images)
    for name in ("defocus_blur", "pixelate"):
        assert score(corruptions.corrupt(images, name, 5)) > clean - 0.01  # CIFAR's table: nothing happens
        assert score(corruptions.corrupt(images, name, 5, parameters="digits-c")) < clean - 0.1, name


def test_digits_c_is_written_with_its_own_table_and_records_it(tmp_path):
    folder, written, _ = corruptions.write_corrupted_dataset("digits", None, tmp_path, ["pixelate"])
    clean = datasets.load_dataset("digits", None, "test", normalize=False).array
    stored = np.load(folder / "pixelate.npy")
    n = len(clean)
    np.testing.assert_array_equal(stored[:n], corruptions.corrupt(clean, "pixelate", 1, parameters="digits-c"))
    assert not np.array_equal(stored[:n], corruptions.corrupt(clean, "pixelate", 1))
    record = json.loads((folder / corruptions.GENERATION_FILE).read_text())
    assert record["parameters"] == "digits-c" and len(record["table"]) == 16
    # A folder written with another digits-C table is never kept as if it were this one.
    (folder / corruptions.GENERATION_FILE).write_text(json.dumps({**record, "table": "0" * 16}))
    with pytest.raises(InputError, match=r"digits-c parameters \(table 0000000000000000\)"):
        corruptions.write_corrupted_dataset("digits", None, tmp_path, ["pixelate"])
    with pytest.raises(InputError, match="unknown corruption parameters 'mnist-c'"):
        corruptions.corrupt(clean[:2], "pixelate", 1, parameters="mnist-c")


# --- parallelism: chosen for the machine, never more busy threads than cores, same numbers ----------


@pytest.mark.parametrize("cores", [1, 2, 3, 8])
def test_the_quickstart_runs_one_single_threaded_job_per_core(monkeypatch, cores):
    monkeypatch.setattr(cpus, "usable_cpus", lambda: cores)
    assert quickstart.parallelism(None, None, "cpu", 5) == (min(cores, 5), 1)
    for jobs, threads in [(None, 2), (2, None), (1, None), (3, 3)]:
        chosen_jobs, chosen_threads = quickstart.parallelism(jobs, threads, "cpu", 5)
        assert chosen_jobs == (jobs or chosen_jobs) and chosen_threads == (threads or chosen_threads)
        if jobs is None or threads is None:  # what is chosen never oversubscribes the cores
            assert chosen_jobs * chosen_threads <= max(cores, (jobs or 1) * (threads or 1))
    assert quickstart.parallelism(None, None, "cuda", 5) == (1, None)


TINY = """
name = "same"
[base]
dataset = "digits"
model = "small_cnn"
width = 2
seeds = [3, 4]
epochs = 1
batch_size = 32
train_samples = 64
[grid]
method = ["sgd", "sam"]
rho = [0.05]
[[measure.sharpness]]
rho = [0.5]
m = 4
n_batches = 2
n_iters = 2
[measure.evaluate]
corruptions = "none"
"""


def _numbers(root, plan):
    found = {}
    for job in plan.jobs:
        path = root / job.name
        table = run_folder.read_results(path, current_only=True)
        table = table.sort_values("key")  # a row's key names its metric, slice, settings, weights and data
        found[job.name] = ([path.joinpath(f"member-{i}.safetensors").read_bytes() for i in (0, 1)],
                           (table["key"].tolist(), table["value"].to_numpy()))
    return found


def test_the_numbers_do_not_depend_on_the_number_of_jobs(tmp_path):
    """One thread each: two jobs in two processes give the weights and results of one job at a time."""
    plan = sweep.parse_sweep(TINY)
    outside = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep.run_sweep(plan, tmp_path / "serial", executor="local", jobs=1, device="cpu")
    finally:
        torch.set_num_threads(outside)
    result = sweep.run_sweep(plan, tmp_path / "parallel", executor="local", jobs=2, threads=1, device="cpu",
                             poll_seconds=0.2)
    assert not result.failures
    serial, parallel = _numbers(tmp_path / "serial", plan), _numbers(tmp_path / "parallel", plan)
    for name in serial:
        assert serial[name][0] == parallel[name][0], name
        assert serial[name][1][0] == parallel[name][1][0] and len(serial[name][1][0]) > 0
        np.testing.assert_array_equal(serial[name][1][1], parallel[name][1][1])
