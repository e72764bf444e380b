"""Spawned members: members 1..M-1 continue from member 0's complete training state at the spawn
epoch (bit for bit), then diverge on their own data order; the parent is recorded in run.json with
its digest, is the same for every run with the same first seed and epoch, is checked on every
resume (a tampered or missing parent is a one-line error), and kill -9 then resume is bit-identical."""
import copy
import shutil
from dataclasses import replace

import pytest
import torch

from ensembles.runs.run_folder import read_config
from ensembles.training import single_basin, trainer
from ensembles.training.trainer import TrainingSettings, read_training_log, resume, train
from landscape.errors import InputError

from killed_training import assert_identical, member_weights, train_until_killed, training_states

SPAWNED = TrainingSettings(dataset="digits", model="small_cnn", width=4, seeds=(3, 5, 7), epochs=4, lr=0.1,
                           batch_size=16, train_samples=128, weight_decay=0, keep="last", spawn_epoch=2)


def _train_recording(run, settings):
    """Train, keeping each spawned member's state right after it was spawned, and member 0's
    training state at the spawn epoch."""
    spawned, parent_checkpoint = {}, {}
    original = trainer._Member.spawn_from

    def recording(member, parent):
        original(member, parent)
        spawned[member.index] = copy.deepcopy(member.state())

    def at_spawn_epoch(event):
        if event["event"] == "epoch" and (event["member"], event["epoch"]) == (0, settings.spawn_epoch):
            parent_checkpoint.update(torch.load(run / "train" / "member-0.pt", weights_only=True))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer._Member, "spawn_from", recording)
        events = []
        train(run, settings, callback=lambda event: (events.append(event), at_spawn_epoch(event)))
    return spawned, parent_checkpoint, events


@pytest.fixture(scope="module")
def spawned_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("spawned") / "run"
    spawned, parent_checkpoint, events = _train_recording(run, SPAWNED)
    return run, spawned, parent_checkpoint, events


def _optimizer_tensors(state):
    """The optimizer's per-parameter state (SGD's momentum buffers) by parameter and name."""
    return {f"{key}.{name}": value
            for key, entry in state["optimizer"]["state"].items() for name, value in entry.items()}


def test_spawned_members_equal_the_parent_at_the_spawn_point_and_differ_afterwards(spawned_run):
    run, spawned, parent_checkpoint, events = spawned_run
    parent = torch.load(run / "train" / "parent.pt", weights_only=True)
    # the parent is member 0's whole training state after spawn_epoch epochs
    assert parent["epoch"] == 2 and parent["seed"] == 3
    assert_identical(parent["model"], parent_checkpoint["model"])
    assert_identical(_optimizer_tensors(parent), _optimizer_tensors(parent_checkpoint))
    momentum = _optimizer_tensors(parent)
    assert momentum and all(bool(tensor.abs().sum() > 0) for tensor in momentum.values())  # momentum is carried
    assert sorted(spawned) == [1, 2]
    for index, state in spawned.items():
        assert_identical(state["model"], parent["model"])
        assert_identical(_optimizer_tensors(state), _optimizer_tensors(parent))
        assert (state["epoch"], state["best_epoch"], state["best_accuracy"]) == (2, parent["best_epoch"],
                                                                                 parent["best_accuracy"])
        assert_identical(state["best"], parent["best"])
        # its own data order and augmentation streams, from its own seed, not the parent's
        fresh = trainer._Member(index, SPAWNED.seeds[index], SPAWNED, 10, torch.device("cpu"))
        assert torch.equal(state["order"], fresh.order.get_state())
        assert not torch.equal(state["order"], parent["order"])
        assert state["log"] == []
    assert not torch.equal(spawned[1]["order"], spawned[2]["order"])
    final = member_weights(run)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert any(not torch.equal(final[a][name], final[b][name]) for name in final[a]), (a, b)
    # member 0 trains to the spawn epoch alone, then everyone continues from it
    order = [(event["member"], event["epoch"]) for event in events]
    assert order == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 3), (1, 4), (2, 3), (2, 4)]
    log = read_training_log(run)
    assert log[log["member"] == 1]["epoch"].tolist() == [3, 4]


def test_run_json_records_the_spawn_epoch_and_the_parent_digest(spawned_run):
    run = spawned_run[0]
    config = read_config(run)
    parent = torch.load(run / "train" / "parent.pt", weights_only=True)
    assert config["spawn_epoch"] == 2
    assert config["parent"]["seed"] == 3 and config["parent"]["epoch"] == 2
    assert config["parent"]["digest"] == single_basin.tensors_digest(parent["model"])
    assert trainer.settings_of_run(run) == SPAWNED


def test_runs_with_the_same_first_seed_and_spawn_epoch_share_a_bit_identical_parent(spawned_run, tmp_path):
    run = spawned_run[0]
    digest = read_config(run)["parent"]["digest"]
    other_seeds = replace(SPAWNED, seeds=(3, 11))
    train(tmp_path / "other", other_seeds)
    assert read_config(tmp_path / "other")["parent"]["digest"] == digest
    # distillation starts at the spawn epoch: the parent phase is plain training, the same parent
    distilled = replace(SPAWNED, distill_from=str(run))
    train(tmp_path / "distilled", distilled)
    assert read_config(tmp_path / "distilled")["parent"]["digest"] == digest
    assert_identical(torch.load(tmp_path / "distilled" / "train" / "parent.pt", weights_only=True)["model"],
                     torch.load(run / "train" / "parent.pt", weights_only=True)["model"])
    train(tmp_path / "later", replace(SPAWNED, spawn_epoch=1))
    assert read_config(tmp_path / "later")["parent"]["digest"] != digest


def test_spawn_epoch_0_is_a_shared_initialization(tmp_path):
    settings = replace(SPAWNED, spawn_epoch=0, epochs=1)
    spawned, _, _ = _train_recording(tmp_path / "run", settings)
    initial = trainer._Member(0, 3, settings, 10, torch.device("cpu")).model.state_dict()
    parent = torch.load(tmp_path / "run" / "train" / "parent.pt", weights_only=True)
    assert parent["epoch"] == 0
    assert_identical(parent["model"], initial)
    for state in spawned.values():
        assert_identical(state["model"], initial)
        assert state["epoch"] == 0


def _copy(run, tmp_path):
    copied = tmp_path / "copy"
    shutil.copytree(run, copied)
    return copied


def test_a_tampered_parent_is_a_one_line_error(spawned_run, tmp_path):
    run = _copy(spawned_run[0], tmp_path)
    file = run / "train" / "parent.pt"
    state = torch.load(file, weights_only=True)
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 1
    torch.save(state, file)
    with pytest.raises(InputError) as error:
        resume(run, note=lambda sentence: None)
    assert "parent.pt is not the parent" in str(error.value) and "replaced or altered" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_missing_parent_is_a_one_line_error(spawned_run, tmp_path):
    run = _copy(spawned_run[0], tmp_path)
    (run / "train" / "parent.pt").unlink()
    with pytest.raises(InputError, match=r"parent\.pt, the parent of the spawned members, is missing") as error:
        resume(run, note=lambda sentence: None)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("member, epoch", [(0, 2), (1, 3)], ids=["at the spawn epoch", "after spawning"])
def test_kill_9_and_resume_of_a_spawned_run_is_bit_identical(spawned_run, tmp_path, member, epoch):
    reference = spawned_run[0]
    run = tmp_path / "killed"
    train_until_killed(run, SPAWNED, member, epoch)
    resume(run, note=lambda sentence: None)
    for a, b in zip(member_weights(run), member_weights(reference), strict=True):
        assert_identical(a, b)
    for a, b in zip(training_states(run), training_states(reference), strict=True):
        assert_identical(a["model"], b["model"])
    assert read_config(run)["parent"]["digest"] == read_config(reference)["parent"]["digest"]


def test_spawning_is_refused_where_it_cannot_apply():
    with pytest.raises(InputError, match=r"spawn_epoch must lie in 0\.\.3"):
        replace(SPAWNED, spawn_epoch=4)
    with pytest.raises(InputError, match="at least 2 members"):
        replace(SPAWNED, seeds=(3,))
    with pytest.raises(InputError, match="--spawn-epoch 2 has no effect with --method sharpbalance"):
        replace(SPAWNED, method="sharpbalance")
