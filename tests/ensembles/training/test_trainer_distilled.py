"""Distilled training: a student learns from a teacher run's predictions on the training split,
read from the teacher's logit cache (computed once); the teacher's digests are recorded and checked
on every resume (a missing or changed teacher is a one-line error); the student ends closer to its
teacher than a plain member of the same seed; kill -9 then resume is bit-identical."""
import shutil
from dataclasses import replace

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from ensembles.data.datasets import load_dataset
from ensembles.runs import logit_cache
from ensembles.runs.files import file_digest
from ensembles.runs.run_folder import load_run, member_path, read_config, save_member
from ensembles.training import single_basin
from ensembles.training.trainer import TrainingSettings, resume, train
from landscape.errors import InputError

from killed_training import assert_identical, member_weights, train_until_killed, training_states

BASE = TrainingSettings(dataset="digits", model="small_cnn", width=4, seeds=(21, 22), epochs=6, lr=0.1,
                        batch_size=16, train_samples=192, weight_decay=0, schedule="cosine", keep="last")
TRAIN = logit_cache.DataSlice("digits", "train")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(run, BASE)
    return run


def _student(teacher, **changes):
    return replace(BASE, seeds=(3, 5), distill_from=str(teacher), distill_weight=0.9, **changes)


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("student") / "run"
    train(run, _student(teacher))
    return run


def _kl_to(teacher_run, student_run, temperature=2.0) -> list[float]:
    data = load_dataset("digits", split="train")
    inputs = torch.stack([data[i][0] for i in range(192)])
    with torch.no_grad():
        return [float(F.kl_div(F.log_softmax(s(inputs) / temperature, 1), F.softmax(t(inputs) / temperature, 1),
                               reduction="batchmean"))
                for s, t in zip(load_run(student_run).members, load_run(teacher_run).members, strict=True)]


def test_distillation_brings_each_member_closer_to_its_teacher_member(teacher, distilled, tmp_path):
    train(tmp_path / "plain", replace(BASE, seeds=(3, 5)))
    # here: 0.024 and 0.031 distilled, 0.10 and 0.62 plain
    for ours, plain in zip(_kl_to(teacher, distilled), _kl_to(teacher, tmp_path / "plain")):
        assert ours < 0.5 * plain


def test_run_json_records_the_teacher_with_its_digests(teacher, distilled):
    config = read_config(distilled)
    assert config["distill_from"] == str(teacher)
    assert (config["distill_weight"], config["distill_temperature"], config["distill_target"]) == (0.9, 2.0, "member")
    assert config["teacher"] == {"path": str(teacher.resolve()),
                                 "members": [file_digest(member_path(teacher, i)) for i in range(2)],
                                 "data": TRAIN.digest()}


def test_the_teachers_logits_come_from_its_cache_computed_once(teacher, distilled, tmp_path):
    files = [logit_cache.member_logits_path(teacher, TRAIN, i) for i in range(2)]
    assert all(file.is_file() for file in files)
    logits = safetensors.torch.load_file(str(files[1]))["logits"]
    model = load_run(teacher).members[1]
    everything = load_dataset("digits", split="train")
    with torch.no_grad():  # the whole un-augmented training split, in its order
        assert torch.allclose(logits, model(torch.stack([everything[i][0] for i in range(len(everything))])),
                              atol=1e-5)
    written = [file.stat().st_mtime_ns for file in files]
    train(tmp_path / "second", _student(teacher, epochs=1))
    assert [file.stat().st_mtime_ns for file in files] == written  # read, not computed again


def test_a_missing_teacher_is_a_one_line_error_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match=r"teacher run folder .*nowhere \(--distill-from\) does not exist") as error:
        train(tmp_path / "run", _student(tmp_path / "nowhere"))
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def _teacher_and_student(teacher, tmp_path):
    """A copy of the teacher and a one-epoch student of that copy."""
    copied = tmp_path / "teacher"
    shutil.copytree(teacher, copied)
    train(tmp_path / "student", _student(copied, epochs=1))
    return copied, tmp_path / "student"


def test_a_changed_teacher_is_a_one_line_error(teacher, tmp_path):
    copied, student = _teacher_and_student(teacher, tmp_path)
    weights = safetensors.torch.load_file(str(member_path(copied, 1)))
    save_member(copied, 1, {name: tensor * 1.5 for name, tensor in weights.items()}, seed=22)  # retrained, say
    with pytest.raises(InputError, match=r"teacher .* changed since .*student was trained from it \(members \[1\] "
                                         r"differ\); remove .* to retrain it, or restore the teacher") as error:
        resume(student, note=lambda sentence: None)
    assert "\n" not in str(error.value)


def test_a_teacher_removed_since_is_a_one_line_error(teacher, tmp_path):
    copied, student = _teacher_and_student(teacher, tmp_path)
    shutil.rmtree(copied)
    with pytest.raises(InputError, match=r"teacher run folder .*teacher \(distill_from of .*student\) does not "
                                         "exist") as error:
        resume(student, note=lambda sentence: None)
    assert "\n" not in str(error.value)


def test_a_teacher_that_cannot_teach_is_refused(teacher, tmp_path):
    with pytest.raises(InputError, match="has 2 members but the student 3; with distill_target member"):
        train(tmp_path / "three", replace(_student(teacher), seeds=(3, 5, 7)))
    config = read_config(teacher)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(teacher, unfinished)
    config["members"][1]["status"] = "pending"
    (unfinished / "run.json").write_text(__import__("json").dumps(config))
    with pytest.raises(InputError, match=r"has unfinished members \[1\]; finish its training"):
        train(tmp_path / "student", _student(unfinished))
    assert not (tmp_path / "three").exists() and not (tmp_path / "student").exists()


def test_one_member_learns_from_the_teacher_ensemble(teacher, tmp_path):
    settings = replace(_student(teacher, distill_target="ensemble"), seeds=(3,), epochs=2)
    train(tmp_path / "run", settings)
    assert read_config(tmp_path / "run")["teacher"]["members"] == [file_digest(member_path(teacher, i))
                                                                   for i in range(2)]
    plain = tmp_path / "plain"
    train(plain, replace(BASE, seeds=(3,), epochs=2))
    assert any(not torch.equal(a, b) for a, b in zip(member_weights(tmp_path / "run")[0].values(),
                                                     member_weights(plain)[0].values()))


def test_kill_9_and_resume_of_distilled_training_is_bit_identical(teacher, distilled, tmp_path):
    run = tmp_path / "killed"
    train_until_killed(run, _student(teacher), member=0, epoch=3)
    resume(run, note=lambda sentence: None)
    for a, b in zip(member_weights(run), member_weights(distilled), strict=True):
        assert_identical(a, b)
    for a, b in zip(training_states(run), training_states(distilled), strict=True):
        assert_identical(a["model"], b["model"])


def test_teacher_record_is_what_require_same_teacher_compares(teacher, distilled):
    recorded = single_basin.require_same_teacher(distilled, _student(teacher), 10)
    assert recorded == read_config(distilled)["teacher"]


def test_with_sam_the_distillation_loss_is_the_objective_of_both_passes(teacher, tmp_path, monkeypatch):
    from ensembles.training import trainer

    calls = []
    original = trainer.distillation_loss
    monkeypatch.setattr(trainer, "distillation_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
    settings = replace(_student(teacher), method="sam", rho=0.05, epochs=1, train_samples=64)
    train(tmp_path / "run", settings)
    steps = 2 * (64 // 16)  # two members, four batches each
    assert len(calls) == 2 * steps  # at θ and at θ + ε̂


def test_spawned_and_distilled_in_two_processes_equal_one(teacher, tmp_path):
    settings = _student(teacher, epochs=3, train_samples=64, spawn_epoch=1)
    train(tmp_path / "one", settings)
    train(tmp_path / "two", settings, members_parallel=2)
    for a, b in zip(member_weights(tmp_path / "two"), member_weights(tmp_path / "one"), strict=True):
        assert_identical(a, b)
