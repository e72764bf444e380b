"""Training to a criterion (ensembles.training.trainer with until_train_loss / until_train_accuracy):
each member stops at the first epoch whose eval-mode, un-augmented training loss (and accuracy)
meets it, the others continue; a member that never meets it stops at the cap, is kept and marked;
the check changes nothing in training; kill -9 and resume end bit for bit as an uninterrupted run;
keep=best and SharpBalance are refused; the constant schedule; `sharpdiv train` end to end.

The criteria are chosen from a probe run's own log (a criterion nobody meets logs every epoch), so
the tests hold whatever the floats of this machine are, and each asserts the precondition it needs."""
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from ensembles.data.datasets import batches, load_dataset
from ensembles.runs.run_folder import load_run, read_config
from ensembles.training.settings import TrainingSettings
from ensembles.training.trainer import (first_samples, learning_rate, missed_criterion, read_training_log, resume,
                                        summarize, train)
from landscape.errors import InputError

ROOT = Path(__file__).resolve().parents[3]
CAP = 8
#: Two tiny members on 192 digits, constant lr: about 0.1 s an epoch.
BASE = dict(dataset="digits", model="small_cnn", width=4, seeds=(3, 5), epochs=CAP, lr=0.1, batch_size=32,
            weight_decay=0.0, schedule="constant", train_samples=192)
NOBODY_MEETS = 1e-9


def tiny(**criterion) -> TrainingSettings:
    return TrainingSettings(**BASE, **criterion)


def member_weights(run: Path) -> list[dict]:
    return [safetensors.torch.load_file(str(path)) for path in sorted(run.glob("member-*.safetensors"))]


def training_states(run: Path) -> list[dict]:
    return [torch.load(path, weights_only=True) for path in sorted((run / "train").glob("member-*.pt"))]


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def logs(run: Path) -> dict[int, list[dict]]:
    table = read_training_log(run).drop(columns="seconds")
    return {int(member): rows.to_dict("records") for member, rows in table.groupby("member")}


def first_epoch(rows: list[dict], loss=None, accuracy=None) -> int | None:
    """The first epoch of a probe log at which a criterion holds (None: never within the cap)."""
    for row in rows:
        if (loss is None or row["train_eval_loss"] <= loss) and (accuracy is None or row["train_eval_accuracy"] >= accuracy):
            return row["epoch"]
    return None


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """A run whose criterion no member meets: every member trains to the cap, logging every epoch."""
    run = tmp_path_factory.mktemp("probe") / "run"
    train(run, tiny(until_train_loss=NOBODY_MEETS))
    return run


@pytest.fixture(scope="module")
def loss_criterion(probe):
    """A loss level the two members first reach at different epochs, one of them before the cap."""
    log = logs(probe)
    for level in sorted({row["train_eval_loss"] for rows in log.values() for row in rows}):
        stops = [first_epoch(log[member], loss=level) for member in (0, 1)]
        if None not in stops and stops[0] != stops[1] and min(stops) >= 2 and min(stops) < CAP:
            return level, stops
    pytest.fail(f"no loss level in the probe's log stops the members at different epochs: {log}")


@pytest.fixture(scope="module")
def criterion_run(tmp_path_factory, loss_criterion):
    run = tmp_path_factory.mktemp("criterion") / "run"
    events = []
    train(run, tiny(until_train_loss=loss_criterion[0]), callback=events.append)
    return run, events


def test_a_member_stops_at_the_first_epoch_its_eval_mode_train_loss_is_at_most_x(criterion_run, loss_criterion, probe):
    run, events = criterion_run
    level, stops = loss_criterion
    ours = logs(run)
    for member in (0, 1):
        rows = ours[member]
        assert rows[-1]["epoch"] == stops[member]
        assert rows[-1]["train_eval_loss"] <= level < rows[-2]["train_eval_loss"]
        assert all(row["train_eval_loss"] > level for row in rows[:-1])
        assert rows == logs(probe)[member][:stops[member]]  # trained exactly as without stopping, up to the stop
    # members take turns; the one that stopped is not trained further while the other continues
    assert [(e["member"], e["epoch"]) for e in events] == [(m, epoch) for m in (0, 1) for epoch in range(1, stops[m] + 1)]
    entries = read_config(run)["members"]
    assert [(e["status"], e["stop_epoch"], e["reached_criterion"], e["kept"], e["epoch"]) for e in entries] == [
        ("done", stops[m], True, "last", stops[m]) for m in (0, 1)]
    assert read_config(run)["until_train_loss"] == level and read_config(run)["keep"] == "last"
    assert [(row.epochs, row.reached_criterion) for row in summarize(run)] == [(stops[0], True), (stops[1], True)]
    assert missed_criterion(run) == []


def test_the_kept_weights_are_the_stopping_epochs_and_the_logged_loss_is_theirs(criterion_run):
    """An independent eval-mode pass over the un-augmented training split, in one batch."""
    run, _ = criterion_run
    images = first_samples(load_dataset("digits", split="train"), BASE["train_samples"])
    inputs, targets = next(iter(batches(images, len(images))))  # all of them, in order, no augmentation
    states = training_states(run)
    for member, model in enumerate(load_run(run).members):
        with torch.no_grad():
            logits = model(inputs).double()
        last = logs(run)[member][-1]
        assert F.cross_entropy(logits, targets).item() == pytest.approx(last["train_eval_loss"], rel=1e-6)
        assert (logits.argmax(1) == targets).double().mean().item() == pytest.approx(last["train_eval_accuracy"])
        assert_identical(member_weights(run)[member], states[member]["model"])
        assert states[member]["reached_criterion"] is True and states[member]["epoch"] == last["epoch"]


def test_a_member_that_never_meets_the_criterion_stops_at_the_cap_kept_and_marked(probe):
    entries = read_config(probe)["members"]
    assert [(e["status"], e["stop_epoch"], e["reached_criterion"], e["epoch"]) for e in entries] == [
        ("done", CAP, False, CAP)] * 2
    assert len(load_run(probe).members) == 2  # a trained model, honestly labelled
    warnings = missed_criterion(probe)
    assert len(warnings) == 2
    assert warnings[0].startswith(f"member 0 (seed 3) did not reach train loss <= {NOBODY_MEETS:g} within {CAP} epochs "
                                  "(train loss ")
    assert "marked reached_criterion: false" in warnings[1] and "member 1 (seed 5)" in warnings[1]


def test_the_check_changes_nothing_in_training(probe, tmp_path):
    plain = tmp_path / "plain"
    train(plain, TrainingSettings(**BASE, keep="last"))
    for a, b in zip(member_weights(plain), member_weights(probe)):
        assert_identical(a, b)
    without = read_training_log(plain).drop(columns="seconds")
    assert "train_eval_loss" not in without  # no check, no cost, without a criterion
    assert without.equals(read_training_log(probe).drop(columns=["seconds", "train_eval_loss", "train_eval_accuracy"]))
    assert "stop_epoch" not in read_config(plain)["members"][0]  # run.json as before


def test_with_both_criteria_a_member_stops_when_both_hold(probe, tmp_path):
    log = logs(probe)
    chosen = None
    for level in sorted({row["train_eval_loss"] for rows in log.values() for row in rows}):
        for accuracy in sorted({row["train_eval_accuracy"] for rows in log.values() for row in rows}):
            both = [first_epoch(log[m], level, accuracy) for m in (0, 1)]
            alone = [(first_epoch(log[m], loss=level), first_epoch(log[m], accuracy=accuracy)) for m in (0, 1)]
            # a pair where neither criterion alone, nor either of them, gives the same stops as both together
            if None not in both and any(both[m] > alone[m][0] for m in (0, 1)) and any(both[m] > alone[m][1] for m in (0, 1)):
                chosen = level, accuracy, both
                break
        if chosen:
            break
    assert chosen, f"no loss and accuracy levels in the probe's log where both criteria differ from either: {log}"
    level, accuracy, both = chosen
    run = tmp_path / "both"
    train(run, tiny(until_train_loss=level, until_train_accuracy=accuracy))
    assert [e["stop_epoch"] for e in read_config(run)["members"]] == both
    for member, rows in logs(run).items():
        assert rows[-1]["train_eval_loss"] <= level and rows[-1]["train_eval_accuracy"] >= accuracy
        assert not any(row["train_eval_loss"] <= level and row["train_eval_accuracy"] >= accuracy for row in rows[:-1])


def test_an_accuracy_criterion_alone(probe, tmp_path):
    log = logs(probe)
    accuracy = max(row["train_eval_accuracy"] for row in log[0])
    expected = [first_epoch(log[m], accuracy=accuracy) for m in (0, 1)]
    run = tmp_path / "accuracy"
    train(run, tiny(until_train_accuracy=accuracy))
    assert [(e["stop_epoch"], e["reached_criterion"]) for e in read_config(run)["members"]] == [
        (epoch or CAP, epoch is not None) for epoch in expected]


KILL_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, torch
    torch.set_num_threads(1)
    from ensembles.training.trainer import TrainingSettings, train

    def die(event):  # member 0 has stopped (its checkpoint says so) but is not saved as a member yet
        if event["event"] == "epoch" and event["member"] == 1 and event["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    train(sys.argv[1], TrainingSettings(**json.loads(sys.argv[2])), callback=die)
""")


def test_kill_9_and_resume_end_bit_for_bit_as_an_uninterrupted_run(criterion_run, loss_criterion, tmp_path):
    reference, _ = criterion_run
    level, stops = loss_criterion
    run = tmp_path / "killed"
    settings = json.dumps({**asdict(tiny(until_train_loss=level)), "seeds": list(BASE["seeds"])})
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    finished = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run), settings], cwd=ROOT, env=environment,
                              capture_output=True, timeout=300)
    assert finished.returncode == -9, finished.stderr.decode()[-2000:]
    killed = training_states(run)
    assert [state["epoch"] for state in killed] == [stops[0], 1] and killed[0]["reached_criterion"] is True
    assert not list(run.glob("member-*.safetensors"))
    events = []
    resume(run, callback=events.append, note=lambda sentence: None)
    assert [(e["member"], e["epoch"]) for e in events] == [(1, epoch) for epoch in range(2, stops[1] + 1)]
    for a, b in zip(member_weights(run), member_weights(reference)):
        assert_identical(a, b)
    for a, b in zip(training_states(run), training_states(reference)):
        assert_identical(a["model"], b["model"])
    assert logs(run) == logs(reference)
    assert read_config(run)["members"] == read_config(reference)["members"]


# -- the settings -------------------------------------------------------------------------------


def test_keep_is_last_with_a_criterion_and_best_is_refused():
    assert tiny().keep == "best" and tiny(until_train_loss=0.1).keep == "last"
    assert tiny(until_train_accuracy=0.9, keep="last").keep == "last"
    with pytest.raises(InputError) as error:
        tiny(until_train_loss=0.01, keep="best")
    assert str(error.value) == ("keep best is refused with a criterion (train loss <= 0.01): the best-on-validation "
                                "weights need not meet it; drop --keep best to keep the weights of the epoch each "
                                "member stopped at")
    with pytest.raises(InputError, match=r"\(train loss <= 0\.1 and train accuracy >= 1\)"):
        tiny(until_train_loss=0.1, until_train_accuracy=1.0, keep="best")
    with pytest.raises(InputError, match=r"keep best is refused"):
        replace(tiny(), until_train_loss=0.1)  # a best filled in before is still best: refused, never dropped


def test_sharpbalance_is_refused_with_a_criterion():
    for criterion in ({"until_train_loss": 0.01}, {"until_train_accuracy": 1.0}):
        with pytest.raises(InputError) as error:
            TrainingSettings(dataset="digits", model="small_cnn", method="sharpbalance", epochs=4, **criterion)
        flag, value = next(iter(criterion.items()))
        assert str(error.value) == (f"--{flag.replace('_', '-')} {value} has no effect with --method sharpbalance; "
                                    "drop it or use --method sgd")
    for method in ("sgd", "sam", "asam"):
        assert TrainingSettings(dataset="digits", model="small_cnn", method=method, until_train_loss=0.1).keep == "last"


@pytest.mark.parametrize("criterion, message", [
    ({"until_train_loss": 0}, r"^until_train_loss must be a finite number > 0, got 0$"),
    ({"until_train_loss": float("nan")}, r"^until_train_loss must be a finite number > 0, got nan$"),
    ({"until_train_accuracy": 1.5}, r"^until_train_accuracy must be a fraction in \(0, 1\], got 1\.5$"),
    ({"until_train_accuracy": 0}, r"^until_train_accuracy must be a fraction in \(0, 1\], got 0$"),
])
def test_criteria_out_of_range_are_refused(criterion, message):
    with pytest.raises(InputError, match=message):
        tiny(**criterion)


def test_the_constant_schedule_keeps_the_learning_rate(probe):
    settings = tiny(until_train_loss=0.1)
    assert [learning_rate(settings, epoch) for epoch in (0, 1, 4, 7, 100)] == [0.1] * 5
    assert set(read_training_log(probe)["lr"]) == {0.1}
    # the other schedules are defined over the cap
    assert learning_rate(replace(settings, schedule="multistep"), CAP // 2) == pytest.approx(0.01)
    assert learning_rate(replace(settings, schedule="cosine"), CAP) == pytest.approx(0.0)


# -- `sharpdiv train` end to end ---------------------------------------------------------------


def test_sharpdiv_train_until_a_criterion_end_to_end(tmp_path):
    import cli

    common = ["train", "--data", "digits", "--model", "small_cnn", "--width", "4", "--seeds", "3,5", "--lr", "0.1",
              "--batch-size", "32", "--weight-decay", "0", "--schedule", "constant", "--train-samples", "96",
              "--threads", "1"]
    # a loss every member meets after its first epoch (it starts near ln 10 = 2.3)
    met = CliRunner().invoke(cli.main, common + ["--until-train-loss", "5", "--max-epochs", "3", "--out",
                                                 str(tmp_path / "met")])
    assert met.exit_code == 0, met.output
    assert "member 0 (seed 3): 1 epochs (criterion met)" in met.stdout and "warning" not in met.stderr
    config = read_config(tmp_path / "met")
    assert (config["until_train_loss"], config["until_train_accuracy"], config["epochs"]) == (5.0, None, 3)
    assert [(e["stop_epoch"], e["reached_criterion"]) for e in config["members"]] == [(1, True), (1, True)]
    # an accuracy nobody reaches in two epochs: both members hit the cap, each named in a warning line
    missed = CliRunner().invoke(cli.main, common + ["--until-train-accuracy", "1", "--max-epochs", "2", "--out",
                                                    str(tmp_path / "missed")])
    assert missed.exit_code == 0, missed.output
    warnings = [line for line in missed.stderr.splitlines() if line.startswith("sharpdiv: warning:")]
    assert len(warnings) == 2 and "member 1 (seed 5) did not reach train accuracy >= 1 within 2 epochs" in warnings[1]
    assert "member 0 (seed 3): 2 epochs (cap, criterion not met)" in missed.stdout
    refused = CliRunner().invoke(cli.main, common + ["--until-train-loss", "0.1", "--keep", "best", "--out",
                                                     str(tmp_path / "refused")])
    assert refused.exit_code == 2 and "keep best is refused with a criterion" in refused.stderr
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("construction, flag", [({"spawn_epoch": 2}, "--spawn-epoch"),
                                                ({"connect_strength": 0.5}, "--connect-strength")])
def test_a_spawned_or_constrained_ensemble_refuses_a_criterion(construction, flag):
    # member 0 is the parent or the anchor of the others: stopping it on its own would leave them nothing
    with pytest.raises(InputError, match=rf"^{flag} is not offered with a training criterion"):
        tiny(until_train_loss=0.01, **construction)
    assert tiny(**construction).until_train_loss is None  # without a criterion the construction stands
    assert tiny(until_train_loss=0.01, distill_from="teacher-run").distill_from == "teacher-run"
