"""The trainer: kept best weights are the best epoch's, foreign training state and
unrelated files are refused, non-finite hyper-parameters and diverged members fail loudly, nothing
is written before every input is checked, and `train --resume` refuses flags it would ignore."""
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from ensembles.data.datasets import load_dataset
from ensembles.runs.files import MARKER_FILE, require_writable_folder
from ensembles.runs.run_folder import load_run, read_config
from ensembles.training.trainer import TrainingSettings, accuracy, read_training_log, resume, train
from landscape.errors import InputError
from test_train import assert_identical, member_weights, training_states

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


def one_line_refusal(result, *words):
    """Exit 2 and one error line: the whole of stderr, or its last line after progress bars."""
    assert result.exit_code == 2, result.output
    refusals = [line for line in result.stderr.splitlines() if "sharpdiv: error" in line]
    assert len(refusals) == 1 and result.stderr.endswith(refusals[0] + "\n"), result.stderr
    assert refusals[0].startswith("sharpdiv: error: ") and "Traceback" not in result.stderr
    for word in words:
        assert word in refusals[0], (word, refusals[0])


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


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    torch.set_num_threads(1)
    from ensembles.training.trainer import train
    sys.path.insert(0, 'tests')  # as pytest does: sibling test modules import each other by name
    from test_trust_train import KEEP_BEST

    def die_after_second_epoch(event):
        if event["event"] == "epoch" and event["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    train(sys.argv[1], KEEP_BEST, callback=die_after_second_epoch)
""")


def test_kill_and_resume_keeps_the_same_best_weights(best_run, tmp_path):
    run = tmp_path / "killed"
    root = Path(__file__).resolve().parents[1]
    finished = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(run)], cwd=root, capture_output=True, timeout=300)
    assert finished.returncode == -9, finished.stderr.decode()[-2000:]
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


# -- non-finite hyper-parameters are refused; a diverged member is failed, not done


@pytest.mark.parametrize("flag, value", [("--weight-decay", "inf"), ("--lr", "inf"), ("--momentum", "nan"),
                                         ("--lr", "nan")])
def test_non_finite_hyper_parameters_are_refused_before_any_write(tmp_path, flag, value):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", *FLAGS, flag, value, "--out", str(out)])
    one_line_refusal(result)
    assert not out.exists()


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


def test_writable_folder_rules(tmp_path):
    assert require_writable_folder(tmp_path / "new") == tmp_path / "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    require_writable_folder(empty)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        require_writable_folder(tmp_path / "file", force=True)
    used = tmp_path / "used"
    used.mkdir()
    (used / "README.md").write_text("mine")
    with pytest.raises(InputError, match="README.md"):
        require_writable_folder(used)
    require_writable_folder(used, force=True)
    (used / MARKER_FILE).write_text("{}")
    require_writable_folder(used)


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


def test_largest_seed_is_accepted():
    assert replace(KEEP_BEST, seeds=(0, 2**63 - 1)).seeds == (0, 2**63 - 1)


def test_resume_refuses_the_flags_it_would_ignore(best_run):
    result = CliRunner().invoke(main, ["train", "--resume", str(best_run), "--epochs", "5"])
    one_line_refusal(result, "--epochs")
    result = CliRunner().invoke(main, ["train", "--resume", str(best_run), "--method", "sam", "--lr", "0.1",
                                       "--out", "elsewhere", "--threads", "1", "--device", "cpu"])
    one_line_refusal(result, "--method", "--lr", "--out")
    assert "--threads" not in result.stderr and "--device" not in result.stderr
