"""The trainer on scikit-learn's digits: lockstep phases, kill -9 and resume bit for bit, one
process vs two, better than chance, the kept best epoch, the augmentation and the random number
generators it uses, training states it refuses, and `sharpdiv train` end to end."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
from cli import main
from ensembles.data import datasets
from ensembles.data.datasets import batches, load_dataset
from ensembles.runs import run_folder
from ensembles.runs.files import MARKER_FILE
from ensembles.runs.run_folder import load_run, read_config
from ensembles.training import trainer
from ensembles.training.trainer import (TrainingSettings, accuracy, learning_rate, read_training_log, resume,
                                        selection_epochs, settings_of_run, train)
from landscape.errors import InputError

from killed_training import assert_identical, member_weights, train_until_killed, training_states
from tiny_runs import invoke, one_line_refusal

# Two tiny members on 96 digits: three epochs, selections after epochs 1 and 2.
TINY = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sharpbalance", seeds=(3, 5),
                        rho=0.1, k=0.3, td=1, reselect_every=1, epochs=3, lr=0.05, batch_size=32,
                        train_samples=96, score_chunk_size=32)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One uninterrupted sequential run of TINY, with the order of its events."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    events = []
    train(run, TINY, callback=events.append)
    return run, events


def test_members_advance_in_lockstep_phases(tiny_run):
    _, events = tiny_run
    order = [(e["event"], e.get("member"), e["epoch"]) for e in events]
    assert order == [("epoch", 0, 1), ("epoch", 1, 1), ("select", None, 1),
                     ("epoch", 0, 2), ("epoch", 1, 2), ("select", None, 2),
                     ("epoch", 0, 3), ("epoch", 1, 3)]


def test_run_folder_holds_settings_logs_sets_and_best_weights(tiny_run):
    run, _ = tiny_run
    config = read_config(run)
    for name, value in dict(method="sharpbalance", rho=0.1, k=0.3, td=1, epochs=3, lr=0.05, schedule="multistep",
                            batch_size=32, weight_decay=5e-4, momentum=0.9, sparsity=0.0, width=4, reselect_every=1,
                            reference_compatible=False, seeds=[3, 5]).items():
        assert config[name] == value, name
    assert settings_of_run(run) == TINY
    assert config["threads"] == 1 and config["device"] == "cpu"  # tests/conftest.py pins one thread
    log = read_training_log(run)
    assert list(log[["member", "epoch"]].itertuples(index=False, name=None)) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert {"train_loss", "train_accuracy", "val_accuracy", "seconds"} <= set(log.columns)
    assert log["sharpbalance_sets"].tolist() == [False, True, True] * 2
    for epoch in (1, 2):
        stored = torch.load(run / "train" / f"sets-epoch-{epoch}.pt", weights_only=True)
        assert stored["sets"].shape == (2, 96) and stored["sets"].dtype == torch.bool
        # member 0's set is member 1's top ⌊0.3·96⌋ = 28 samples by score, and vice versa
        top = torch.argsort(stored["scores"], dim=1, descending=True, stable=True)[:, :28]
        assert set(torch.nonzero(stored["sets"][0]).flatten().tolist()) == set(top[1].tolist())
        assert set(torch.nonzero(stored["sets"][1]).flatten().tolist()) == set(top[0].tolist())
    for state, weights in zip(training_states(run), member_weights(run)):
        assert_identical(state["best"], weights)  # keep="best": the member file is the best epoch's
        assert state["best_accuracy"] == max(row["val_accuracy"] for row in state["log"])
    assert len(load_run(run).members) == 2


def test_multistep_schedule_and_selection_epochs():
    settings = TrainingSettings(dataset="digits", model="mlp", epochs=200)
    assert [learning_rate(settings, e) for e in (0, 99, 100, 149, 150, 199)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    cosine = replace(settings, schedule="cosine")
    assert learning_rate(cosine, 0) == 0.1 and learning_rate(cosine, 100) == pytest.approx(0.05)
    assert selection_epochs(replace(settings, method="sharpbalance", td=100)) == [100]
    assert selection_epochs(replace(settings, method="sharpbalance", td=100, reselect_every=40)) == [100, 140, 180]


def test_kill_9_and_resume_ends_with_the_same_weights(tiny_run, tmp_path):
    reference, _ = tiny_run
    run = tmp_path / "killed"
    train_until_killed(run, TINY, member=1, epoch=1)
    assert [s["epoch"] for s in training_states(run)] == [1, 1]
    assert not list(run.glob("member-*.safetensors"))
    events = []
    resume(run, callback=events.append)
    assert events[0] == {"event": "select", "epoch": 1, "rank": 0}  # picks up exactly where it died
    for a, b in zip(member_weights(run), member_weights(reference)):
        assert_identical(a, b)
    for a, b in zip(training_states(run), training_states(reference)):
        assert_identical(a["model"], b["model"])
    assert read_training_log(run).drop(columns="seconds").equals(read_training_log(reference).drop(columns="seconds"))


def test_one_process_and_two_processes_give_identical_weights(tiny_run, tmp_path):
    reference, _ = tiny_run
    run = tmp_path / "parallel"
    train(run, TINY, members_parallel=2)
    for a, b in zip(member_weights(run), member_weights(reference)):
        assert_identical(a, b)
    for epoch in (1, 2):
        ours = torch.load(run / "train" / f"sets-epoch-{epoch}.pt", weights_only=True)
        theirs = torch.load(reference / "train" / f"sets-epoch-{epoch}.pt", weights_only=True)
        assert torch.equal(ours["scores"], theirs["scores"]) and torch.equal(ours["sets"], theirs["sets"])


def test_digits_training_beats_chance(tmp_path):
    settings = TrainingSettings(dataset="digits", model="mlp", method="sgd", seeds=(1,), epochs=3, lr=0.05,
                                schedule="cosine", batch_size=64)
    train(tmp_path / "run", settings)
    member = load_run(tmp_path / "run").members[0]
    test = load_dataset("digits", split="test")
    with torch.no_grad():
        correct = sum(int((member(x).argmax(1) == y).sum()) for x, y in batches(test, 512))
    assert correct / len(test) > 0.6  # chance is 0.1
    config = read_config(tmp_path / "run")
    assert config["rho"] == 0.0 and config["k"] is None and config["td"] is None
    assert settings_of_run(tmp_path / "run") == settings


def test_sharpdiv_train_end_to_end(tmp_path):
    from cli import main

    out = tmp_path / "cli-run"
    arguments = ["train", "--data", "digits", "--model", "small_cnn", "--width", "4", "--method", "sharpbalance",
                 "--rho", "0.1", "--k", "0.3", "--td", "1", "--epochs", "2", "--lr", "0.05", "--batch-size", "32",
                 "--seeds", "3,5", "--train-samples", "64", "--out", str(out), "--threads", "1"]
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "member 1 (seed 5)" in result.stdout
    run = load_run(out)
    assert run.config["method"] == "sharpbalance" and run.config["td"] == 1 and len(run.members) == 2
    again = CliRunner().invoke(main, ["train", "--resume", str(out)])  # a finished run stays as it is
    assert again.exit_code == 0, again.output
    bad = CliRunner().invoke(main, arguments[:-4] + ["--td", "2", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "td" in bad.output


def test_asam_members_step_with_the_given_eta_and_the_others_without_one():
    asam = TrainingSettings(dataset="digits", model="mlp", method="asam", eta=0.05, seeds=(3,))
    optimizer = trainer._Member(0, 3, asam, 10, torch.device("cpu")).optimizer
    assert (optimizer.adaptive, optimizer.eta, optimizer.rho) == (True, 0.05, 0.2)
    sam = TrainingSettings(dataset="digits", model="mlp", method="sam", seeds=(3,))
    assert trainer._Member(0, 3, sam, 10, torch.device("cpu")).optimizer.adaptive is False


# -- resuming with the thread count the run was trained with


@pytest.fixture
def threads_seen(monkeypatch):
    """Replace the training loop by a probe of the thread count it would run with."""
    seen = []
    monkeypatch.setattr(trainer, "_train_members", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    return seen


def copy_with(run: Path, destination: Path, **changes) -> Path:
    shutil.copytree(run, destination)
    config = json.loads((destination / "run.json").read_text())
    config.update(changes)
    for name in [name for name, value in changes.items() if value is None]:
        config.pop(name)
    (destination / "run.json").write_text(json.dumps(config))
    return destination


def test_resume_trains_with_the_stored_thread_count(tiny_run, tmp_path, threads_seen):
    run = copy_with(tiny_run[0], tmp_path / "run", threads=2)  # as if trained with --threads 2
    notes = []
    assert torch.get_num_threads() == 1
    resume(run, note=notes.append)
    assert threads_seen == [2]
    assert torch.get_num_threads() == 1  # the caller's count is restored
    assert len(notes) == 1 and "2 torch threads" in notes[0]
    notes.clear()
    resume(run, threads=3, note=notes.append)  # explicitly different: allowed, but not bit-identical
    assert threads_seen == [2, 3]
    assert len(notes) == 1 and "not be bit-identical" in notes[0] and "trained with 2" in notes[0]
    with pytest.warns(UserWarning, match="not be bit-identical"):  # without note=: a warning
        resume(run, threads=1)


def test_resume_notes_an_unrecorded_thread_count_and_another_device(tiny_run, tmp_path, threads_seen):
    old = copy_with(tiny_run[0], tmp_path / "old", threads=None, device=None)  # a run.json from before
    notes = []
    resume(old, note=notes.append)
    assert threads_seen == [1] and len(notes) == 1 and "does not record the thread count" in notes[0]
    on_gpu = copy_with(tiny_run[0], tmp_path / "gpu", device="cuda:0")
    notes.clear()
    resume(on_gpu, note=notes.append)
    assert any("trained on cuda:0" in note and "not be bit-identical" in note for note in notes)


def test_sharpdiv_train_resume_says_which_thread_count_it_uses(tiny_run, tmp_path, threads_seen):
    from cli import main

    run = copy_with(tiny_run[0], tmp_path / "run", threads=2)
    restored = CliRunner().invoke(main, ["train", "--resume", str(run), "--device", "cpu"])
    assert restored.exit_code == 0, restored.output
    assert "resuming with 2 torch threads" in restored.stderr and threads_seen == [2]
    other = CliRunner().invoke(main, ["train", "--resume", str(run), "--device", "cpu", "--threads", "1"])
    assert other.exit_code == 0, other.output
    assert "not be bit-identical" in other.stderr and threads_seen == [2, 1]


def test_accuracy_restores_each_submodule_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(3 * 8 * 8, 2))
    model[1].eval()  # frozen dropout inside a model in training mode
    images = np.zeros((4, 8, 8, 3), np.uint8)
    data = datasets.ImageDataset(images, np.array([0, 1, 0, 1]), name="toy", split="test", num_classes=2,
                                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    trainer.accuracy(model, data, torch.device("cpu"), batch_size=2)
    assert model.training and model[0].training and not model[1].training


def test_asam_training_defaults_to_the_official_rule_and_records_it(tmp_path):
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="asam", seeds=(4,), epochs=1)
    assert settings.asam_scale == "weights"
    member = trainer._Member(0, 4, settings, 10, torch.device("cpu"))
    scales = {name: member.optimizer._scale(p) for name, p in member.model.named_parameters()}
    assert all(isinstance(t, torch.Tensor) == ("weight" in name) for name, t in scales.items()), scales
    assert any("bias" in name for name in scales)

    flags = ["--data", "digits", "--model", "small_cnn", "--width", "4", "--method", "asam", "--epochs", "1",
             "--batch-size", "32", "--train-samples", "32", "--seeds", "4", "--threads", "1"]
    for given, recorded in (([], "weights"), (["--asam-scale", "all"], "all")):
        out = tmp_path / f"run-{recorded}"
        result = CliRunner().invoke(main, ["train", *flags, *given, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert read_config(out)["asam_scale"] == recorded
        assert settings_of_run(out).asam_scale == recorded


def test_asam_runs_recorded_before_the_option_read_as_all_parameters(tmp_path):
    out = tmp_path / "old"
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="asam", seeds=(4,), epochs=1,
                                batch_size=32, train_samples=32, asam_scale="all")
    trainer.train(out, settings)
    config = json.loads((out / "run.json").read_text())
    del config["asam_scale"]  # as written before asam_scale existed (ASAM then scaled every parameter)
    (out / "run.json").write_text(json.dumps(config))
    record = json.loads((out / "train" / "settings.json").read_text())
    del record["asam_scale"]
    (out / "train" / "settings.json").write_text(json.dumps(record))
    assert settings_of_run(out).asam_scale == "all"
    trainer._require_own_training_state(out, settings, recorded=True)  # the old state is still its own


def _weights(run):
    import safetensors.torch

    return [safetensors.torch.load_file(str(path)) for path in sorted(run.glob("member-*.safetensors"))]


# Two members on 96 digits (augmented: random crops and flips), SAM so both steps see the batch twice.
SMALL = dict(dataset="digits", model="small_cnn", width=4, method="sam", rho=0.1, seeds=(3, 5), epochs=2, lr=0.05,
             batch_size=32, train_samples=96)


def test_weights_are_bit_identical_to_the_global_rng_swap(tmp_path, monkeypatch):
    from ensembles.data import datasets
    from ensembles.training import trainer

    settings = trainer.TrainingSettings(**SMALL)
    assert datasets.load_dataset("digits", None, "train", augment=True).augment
    trainer.train(tmp_path / "new", settings)

    # The old path: crops drawn from the global RNG, swapped to the member's stream per epoch.
    original_crop, original_epoch = datasets.random_crop_and_flip, trainer._Member.train_epoch

    def crop_from_global(images, padding=datasets.CROP_PADDING, generator=None):
        return original_crop(images, padding)

    def epoch_with_swap(member, data, sets):
        outside = torch.get_rng_state()
        torch.set_rng_state(member.augmentation.get_state())
        try:
            return original_epoch(member, data, sets)
        finally:
            member.augmentation.set_state(torch.get_rng_state())
            torch.set_rng_state(outside)

    monkeypatch.setattr(datasets, "random_crop_and_flip", crop_from_global)
    monkeypatch.setattr(trainer._Member, "train_epoch", epoch_with_swap)
    trainer.train(tmp_path / "old", settings)
    monkeypatch.undo()

    new, old = _weights(tmp_path / "new"), _weights(tmp_path / "old")
    assert len(new) == 2
    for a, b in zip(new, old):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    for a, b in zip(sorted((tmp_path / "new" / "train").glob("member-*.pt")),
                    sorted((tmp_path / "old" / "train").glob("member-*.pt"))):  # the streams end alike
        assert torch.equal(torch.load(a, weights_only=True)["augmentation"],
                           torch.load(b, weights_only=True)["augmentation"])


def test_training_neither_reads_nor_moves_the_global_rng(tmp_path, monkeypatch):
    from ensembles.training import trainer

    settings = trainer.TrainingSettings(**{**SMALL, "epochs": 1})
    original_epoch = trainer._Member.train_epoch
    touched = []

    def epoch_watched(member, data, sets):
        with monkeypatch.context() as inside:
            inside.setattr(torch, "set_rng_state", lambda state: touched.append("set"))
            inside.setattr(torch, "get_rng_state", lambda: touched.append("get"))
            before = torch.random.default_generator.get_state()
            row = original_epoch(member, data, sets)
            assert torch.equal(before, torch.random.default_generator.get_state()), "the epoch drew globally"
        return row

    monkeypatch.setattr(trainer._Member, "train_epoch", epoch_watched)
    trainer.train(tmp_path / "run", settings)
    assert touched == []


def test_a_members_progress_bar_appears_when_that_member_starts(tmp_path, monkeypatch):
    from ensembles.training import trainer

    events = []
    original = trainer._progress_bar

    def recorded(member, settings, enabled):
        events.append(("bar", member.index))
        return original(member, settings, enabled)

    monkeypatch.setattr(trainer, "_progress_bar", recorded)
    settings = trainer.TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sgd", seeds=(3, 5),
                                        epochs=2, lr=0.05, batch_size=32, train_samples=64)
    trainer.train(tmp_path / "run", settings, progress=False,
                  callback=lambda event: events.append(("epoch", event["member"])) if event["event"] == "epoch" else None)
    # member 1's bar (and its clock) starts after member 0 has trained, not before: its ETA is its own
    assert events == [("bar", 0), ("epoch", 0), ("epoch", 0), ("bar", 1), ("epoch", 1), ("epoch", 1)]


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


# One member whose validation accuracy peaks at epoch 1 of 3 (0.106, 0.067, 0.089 with one thread).
KEEP_BEST = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sgd", seeds=(4,), epochs=3,
                             lr=0.1, batch_size=32, train_samples=64)


FLAGS = ["--data", "digits", "--model", "small_cnn", "--width", "4", "--method", "sgd", "--epochs", "3",
         "--lr", "0.1", "--batch-size", "32", "--train-samples", "64", "--seeds", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def best_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("keep-best") / "run"
    train(run, KEEP_BEST)
    return run


# -- --keep best keeps the best epoch's weights


def test_kept_member_is_the_best_epoch_not_the_last(best_run):
    log = read_training_log(best_run)
    member = read_config(best_run)["members"][0]
    assert member["epoch"] == 1 and log["val_accuracy"].iloc[0] > log["val_accuracy"].iloc[-1]  # best is not last
    model = load_run(best_run).members[0]
    again = accuracy(model, load_dataset("digits", None, "val"), torch.device("cpu"))
    assert again == member["val_accuracy"] == log["val_accuracy"].iloc[0]
    kept = member_weights(best_run)[0]
    final = training_states(best_run)[0]["model"]
    assert any(not torch.equal(kept[name], final[name]) for name in kept)


def test_kill_and_resume_keeps_the_same_best_weights(best_run, tmp_path):
    run = tmp_path / "killed"
    train_until_killed(run, KEEP_BEST, member=0, epoch=2)
    assert training_states(run)[0]["epoch"] == 2
    resume(run)
    assert_identical(member_weights(run)[0], member_weights(best_run)[0])
    assert_identical(training_states(run)[0]["best"], training_states(best_run)[0]["best"])
    assert read_config(run)["members"][0]["epoch"] == 1


# -- a train/ state of other settings is refused, never adopted


def test_foreign_training_state_is_refused(best_run, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    shutil.copytree(best_run / "train", out / "train")
    (out / MARKER_FILE).write_text(json.dumps({"made_by": "sharpdiv", "kind": "run"}))
    sam = [*FLAGS[:7], "sam", *FLAGS[8:]]
    result = CliRunner().invoke(main, ["train", *sam, "--out", str(out)])
    one_line_refusal(result, "other settings", "method 'sam' here, 'sgd' there")
    assert not (out / "run.json").exists() and not list(out.glob("member-*"))


def test_training_state_without_settings_is_refused_even_with_force(best_run, tmp_path):
    out = tmp_path / "unknown"
    shutil.copytree(best_run / "train", out / "train")
    (out / "train" / "settings.json").unlink()
    result = CliRunner().invoke(main, ["train", *FLAGS, "--out", str(out), "--force"])
    one_line_refusal(result, "unknown settings")
    assert not (out / "run.json").exists()


def test_own_training_state_is_continued_when_run_json_was_lost(best_run, tmp_path):
    out = tmp_path / "lost"
    shutil.copytree(best_run, out)
    (out / "run.json").unlink()
    (out / "member-0.safetensors").unlink()
    result = CliRunner().invoke(main, ["train", *FLAGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert_identical(member_weights(out)[0], member_weights(best_run)[0])


def test_resume_refuses_a_training_state_of_other_settings(best_run, tmp_path):
    run = tmp_path / "swapped"
    shutil.copytree(best_run, run)
    record = json.loads((run / "train" / "settings.json").read_text())
    (run / "train" / "settings.json").write_text(json.dumps({**record, "lr": 0.5}))
    with pytest.raises(InputError, match="lr 0.1 here, 0.5 there"):
        resume(run)


@pytest.mark.parametrize("method", ["sgd", "sharpbalance"])
def test_a_diverged_member_is_marked_failed_with_its_epoch(tmp_path, method):
    out = tmp_path / "run"
    flags = [*FLAGS[:7], method, *FLAGS[8:]]
    flags[flags.index("--seeds") + 1] = "4,5"
    flags[flags.index("--lr") + 1] = "1e30"
    result = CliRunner().invoke(main, ["train", *flags, "--out", str(out)])
    one_line_refusal(result, "member 0 (seed 4) diverged at epoch 1", "member 1 (seed 5) diverged at epoch 1")
    members = read_config(out)["members"]
    assert [(m["status"], m["diverged_epoch"]) for m in members] == [("failed", 1), ("failed", 1)]
    assert not list(out.glob("member-*.safetensors"))
    with pytest.raises(InputError, match="no finished members"):
        load_run(out)
    again = CliRunner().invoke(main, ["train", "--resume", str(out)])  # resuming says the same, trains nothing
    one_line_refusal(again, "diverged at epoch 1")


# -- unrelated files are never overwritten


def test_train_refuses_a_folder_with_unrelated_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "member-0.safetensors").write_bytes(b"my own weights")
    result = CliRunner().invoke(main, ["train", *FLAGS, "--epochs", "1", "--out", str(out)])
    one_line_refusal(result, "not made by sharpdiv", "member-0.safetensors", "--force")
    assert (out / "member-0.safetensors").read_bytes() == b"my own weights"
    assert sorted(p.name for p in out.iterdir()) == ["member-0.safetensors"]
    forced = CliRunner().invoke(main, ["train", *FLAGS, "--epochs", "1", "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert len(load_run(out).members) == 1


# -- every input is checked before the first write; --resume refuses ignored flags


@pytest.mark.parametrize("changes, words", [
    (["--members-parallel", "5", "--seeds", "4,5"], ["members_parallel = 5", "2 members"]),
    (["--seeds", "-1,2"], ["seed -1", "0.."]),
    (["--seeds", str(2**63)], [f"seed {2**63}"]),
    (["--seeds", str(2**64 + 1)], [f"seed {2**64 + 1}"]),
])
def test_refused_settings_leave_nothing_behind(tmp_path, changes, words):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", *FLAGS, *changes, "--out", str(out)])
    one_line_refusal(result, *words)
    assert not out.exists()


def test_resume_refuses_the_flags_it_would_ignore(best_run):
    result = CliRunner().invoke(main, ["train", "--resume", str(best_run), "--epochs", "5"])
    one_line_refusal(result, "--epochs")
    result = CliRunner().invoke(main, ["train", "--resume", str(best_run), "--method", "sam", "--lr", "0.1",
                                       "--out", "elsewhere", "--threads", "1", "--device", "cpu"])
    one_line_refusal(result, "--method", "--lr", "--out")
    assert "--threads" not in result.stderr and "--device" not in result.stderr


ONE_TINY_EPOCH = ("--epochs", 1, "--seeds", 1, "--train-samples", 16, "--batch-size", 8, "--device", "cpu")


def ok(*arguments):
    result = invoke(*arguments)
    assert result.exit_code == 0, result.output
    return result


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
       "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25", "--out", run, *ONE_TINY_EPOCH, "--trust-model-code")
    result = ok("train", "--resume", run, "--device", "cpu", "--trust-model-code")
    assert "member 0 (seed 1): 1 epochs" in result.output
    from ensembles.training.trainer import settings_of_run

    settings = settings_of_run(run)
    assert settings.model_args == {"hidden": 3}
    assert settings.model_input == {"size": [16, 16], "mean": [0.5] * 3, "std": [0.25] * 3}
