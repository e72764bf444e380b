"""The trainer on scikit-learn's digits: lockstep phases, kill -9 and resume bit for bit, one
process vs two, better than chance, pruning, errors, and `sharpdiv train` end to end."""
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from ensembles.models import pruning
from ensembles.training import trainer
from ensembles.data.datasets import batches, load_dataset
from ensembles.runs.run_folder import load_run, read_config
from ensembles.training.trainer import (TrainingSettings, learning_rate, read_training_log, resume, selection_epochs,
                             settings_of_run, train)
from landscape.errors import InputError

# Two tiny members on 96 digits: three epochs, selections after epochs 1 and 2.
TINY = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sharpbalance", seeds=(3, 5),
                        rho=0.1, k=0.3, td=1, reselect_every=1, epochs=3, lr=0.05, batch_size=32,
                        train_samples=96, score_chunk_size=32)


def member_weights(run: Path) -> list[dict]:
    files = sorted(run.glob("member-*.safetensors"))
    return [safetensors.torch.load_file(str(f)) for f in files]


def training_states(run: Path) -> list[dict]:
    return [torch.load(f, weights_only=True) for f in sorted((run / "train").glob("member-*.pt"))]


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


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


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from ensembles.training.trainer import train
    from tests.test_train import TINY

    def die_after_first_epoch(event):
        if event["event"] == "epoch" and event["member"] == 1 and event["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    train(sys.argv[1], TINY, callback=die_after_first_epoch)
""")


def test_kill_9_and_resume_ends_with_the_same_weights(tiny_run, tmp_path):
    reference, _ = tiny_run
    run = tmp_path / "killed"
    root = Path(__file__).resolve().parents[1]
    finished = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run)], cwd=root, capture_output=True, timeout=300)
    assert finished.returncode == -9, finished.stderr.decode()[-2000:]
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


def test_td_not_before_the_last_epoch_is_an_error():
    with pytest.raises(InputError, match="td"):
        replace(TINY, td=3, reselect_every=None)
    with pytest.raises(InputError, match="reference"):
        replace(TINY, reference_compatible=True)  # it selects once; reselect_every contradicts that
    with pytest.raises(InputError):
        replace(TINY, seeds=(3,))


def test_global_magnitude_masks_remove_the_smallest_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Conv1d(5, 4, 3))
    masks = pruning.global_magnitude_masks(model, 0.6)
    weights = torch.cat([model[0].weight.flatten(), model[2].weight.flatten()]).abs()
    kept = torch.cat([masks["0.weight"].flatten(), masks["2.weight"].flatten()])
    removed = int(0.6 * weights.numel())
    assert int((~kept).sum()) == removed
    assert weights[~kept].max() <= weights[kept].min()  # one global threshold
    assert set(masks) == {"0.weight", "2.weight"}  # biases stay dense


def test_pruned_training_keeps_the_sparsity(tmp_path):
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sam", rho=0.1, seeds=(2,),
                                epochs=2, lr=0.05, batch_size=32, train_samples=64, sparsity=0.7, prune_epoch=1,
                                keep="last")
    train(tmp_path / "run", settings)
    state = training_states(tmp_path / "run")[0]
    model = load_run(tmp_path / "run").members[0]
    total = sum(p.numel() for p in pruning.prunable_parameters(model).values())
    assert pruning.measured_sparsity(model) * total >= int(0.7 * total)  # ⌊0.7 P⌋ weights removed
    parameters = dict(model.named_parameters())
    for name, mask in state["masks"].items():
        assert torch.all(parameters[name][~mask] == 0), name
        assert bool((parameters[name][mask] != 0).any())
    assert state["log"][0]["epoch"] == 1


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


# -- settings a method would ignore are refused, not dropped


def test_defaults_follow_the_method():
    assert TrainingSettings(dataset="digits", model="mlp").rho == 0.0
    assert TrainingSettings(dataset="digits", model="mlp", method="sam").rho == 0.2
    sharpbalance = TrainingSettings(dataset="digits", model="mlp", method="sharpbalance", epochs=30)
    assert (sharpbalance.rho, sharpbalance.k, sharpbalance.td) == (0.2, 0.4, 15)
    # rho = 0 is allowed by design: SAM with a zero radius is exactly SGD
    assert TrainingSettings(dataset="digits", model="mlp", method="sgd", rho=0.0).rho == 0.0
    assert TrainingSettings(dataset="digits", model="mlp", method="sam", rho=0.0).rho == 0.0
    # eta is ASAM's alone: 0.01 (Kwon et al.) unless given, and absent (None in run.json) elsewhere
    assert TrainingSettings(dataset="digits", model="mlp", method="asam").eta == 0.01
    assert TrainingSettings(dataset="digits", model="mlp", method="asam", eta=0.0).eta == 0.0
    for method in ("sgd", "sam", "sharpbalance"):
        settings = TrainingSettings(dataset="digits", model="mlp", method=method, epochs=10)
        assert settings.eta is None and settings.run_fields()["eta"] is None


@pytest.mark.parametrize("method, given, named", [
    ("sgd", dict(rho=0.3), "--rho 0.3 has no effect with --method sgd; drop it or use --method sam"),
    ("sgd", dict(k=0.4), "--k 0.4 has no effect with --method sgd"),
    ("sam", dict(td=5), "--td 5 has no effect with --method sam"),
    ("asam", dict(k=0.3, td=2), "--k 0.3 --td 2 have no effect with --method asam"),
    ("sam", dict(reselect_every=2), "--reselect-every 2 has no effect"),
    ("sgd", dict(reference_compatible=True), "--reference-compatible has no effect"),
    ("sam", dict(eta=0.05), "--eta 0.05 has no effect with --method sam (ASAM only); drop it or use --method asam"),
    ("sgd", dict(eta=0.01), "--eta 0.01 has no effect with --method sgd (ASAM only"),
    ("sharpbalance", dict(eta=0.2), "--eta 0.2 has no effect with --method sharpbalance (ASAM only"),
])
def test_a_setting_the_method_ignores_is_an_error(method, given, named):
    with pytest.raises(InputError) as error:
        TrainingSettings(dataset="digits", model="mlp", method=method, epochs=10, **given)
    assert named in str(error.value)


def test_sharpdiv_train_refuses_rho_with_sgd(tmp_path):
    from cli import main

    result = CliRunner().invoke(main, ["train", "--data", "digits", "--model", "mlp", "--method", "sgd", "--rho", "0.3",
                                       "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--rho 0.3 has no effect with --method sgd; drop it or use --method sam" in result.stderr
    assert not (tmp_path / "run").exists()


def test_sharpdiv_train_refuses_eta_outside_asam(tmp_path):
    from cli import main

    result = CliRunner().invoke(main, ["train", "--data", "digits", "--model", "mlp", "--method", "sam", "--eta", "0.05",
                                       "--epochs", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "sharpdiv: error: --eta 0.05 has no effect with --method sam (ASAM only); drop it or use --method asam"]
    assert not (tmp_path / "run").exists()


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
