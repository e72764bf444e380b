"""The trainer on scikit-learn's digits: lockstep phases, kill -9 and resume bit for bit, one
process vs two, better than chance, pruning, errors, and `sharpdiv train` end to end."""
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from click.testing import CliRunner

from ensembles import pruning
from ensembles.data import batches, load_dataset
from ensembles.runs import load_run, read_config
from ensembles.train import (TrainingSettings, learning_rate, read_training_log, resume, selection_epochs,
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
    from ensembles.train import train
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
