"""SLURM as a sweep uses it, without a cluster: the warning signal scaled to the time limit and
limits too short to checkpoint refused, the array's parallelism, the queue, scontrol and sacct read
through stand-in commands on PATH, tasks followed until they end (a task gone without its result
fails, a requeued one does not), and a failure that names state, exit code and the error log.
tests/ensembles/studies/test_slurm_cluster.py runs the same on a real cluster."""
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from ensembles.studies import slurm, sweep
from landscape.errors import InputError

from tiny_runs import one_error_line


def test_the_warning_signal_is_a_tenth_of_the_limit_at_most_two_minutes():
    assert [slurm.signal_delay_seconds(m) for m in (1, 2, 5, 10, 20, 60, 24 * 60)] == [6, 12, 30, 60, 120, 120, 120]
    # (24 h used to ask for 120 s as well; a one-minute limit asked for 120 s and was signalled at once)


def test_a_limit_a_task_could_be_signalled_in_before_it_ran_half_a_minute_is_refused():
    with pytest.raises(InputError) as refused:
        slurm.check_time_limit("00:01:00")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("--time 00:01:00 is too short for a SLURM task to save its work")
    assert "6 s before the limit" in message and "up to 60 s earlier" in message and "--time 2 (minutes)" in message
    # 2 minutes: signalled 12 s before the end, at worst 60 s earlier still, so not before 48 s
    assert slurm.check_time_limit("00:02:00") == slurm.check_time_limit("2") == 2
    assert slurm.check_time_limit("1-00:00:00") == 24 * 60
    with pytest.raises(InputError, match="--time 1 is too short"):
        slurm.slurm_parameters(slurm.ClusterRequest(time="1"), "x")


def test_every_task_of_the_array_at_once_unless_jobs_caps_it():
    request = slurm.ClusterRequest(time="00:30:00", gpus_per_job=0)
    assert slurm.slurm_parameters(request, "grid", tasks=28)["slurm_array_parallelism"] == 28
    assert slurm.slurm_parameters(request, "grid", jobs=4, tasks=28)["slurm_array_parallelism"] == 4
    assert slurm.slurm_parameters(slurm.ClusterRequest(array_parallelism=3), "grid", tasks=28)[
        "slurm_array_parallelism"] == 3
    assert slurm.slurm_parameters(request, "grid")["slurm_signal_delay_s"] == 120
    assert slurm.slurm_parameters(slurm.ClusterRequest(time="5"), "grid")["slurm_signal_delay_s"] == 30


def test_sweep_run_refuses_a_short_limit_for_slurm_only(tmp_path, monkeypatch):
    file = tmp_path / "one.toml"
    file.write_text('[base]\ndataset = "digits"\nmodel = "small_cnn"\nwidth = 2\nseeds = [3, 4]\nepochs = 1\n'
                    '[grid]\nmethod = ["sgd"]\n')
    calls = []
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: calls.append(kwargs) or sweep.SweepResult(
        outcomes=(), failures={}, job_ids={}, waited=False))
    refused = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(tmp_path / "out"),
                                            "--executor", "slurm", "--time", "00:01:00"])
    assert "--time 00:01:00 is too short" in one_error_line(refused) and calls == []
    assert not (tmp_path / "out").exists()
    # the executor gets no --jobs unless one is given: every task at once on SLURM
    submitted = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(tmp_path / "out"),
                                              "--executor", "slurm", "--time", "2", "--no-wait"])
    assert submitted.exit_code == 0, submitted.output
    capped = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(tmp_path / "out"),
                                           "--executor", "slurm", "--jobs", "3", "--no-wait"])
    assert capped.exit_code == 0, capped.output
    assert [call["jobs"] for call in calls] == [None, 3]


def test_run_sweep_says_how_many_at_once(tmp_path, monkeypatch):
    plan = sweep.parse_sweep('[base]\ndataset = "digits"\nmodel = "small_cnn"\nwidth = 2\nseeds = [3, 4]\n'
                             'epochs = 1\n[grid]\nmethod = ["sgd", "sam"]\nrho = [0.05]\n')
    seen = []
    monkeypatch.setattr(sweep, "_run_submitit", lambda todo, root, sweep_, data_path, device, executor, jobs, *rest:
                        seen.append(jobs))
    for jobs, said in ((None, "every task at once"), (5, "at most 5 tasks at once")):
        messages = []
        sweep.run_sweep(plan, tmp_path / "root", executor="slurm", jobs=jobs, wait=False, echo=messages.append)
        assert messages[0].endswith(f"(slurm executor, {said})")
    assert seen == [None, 5]


# -- the SLURM commands, stood in for by scripts on PATH -------------------------------------------


@pytest.fixture
def commands(tmp_path, monkeypatch):
    """Write stand-ins for SLURM commands: ``commands(name, output, status=0, error="")``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    def write(name, output="", status=0, error=""):
        (folder / f"{name}.out").write_text(output)
        (folder / f"{name}.err").write_text(error)
        script = folder / name
        script.write_text(f'#!/bin/sh\necho "$@" >> {folder}/{name}.calls\ncat {folder}/{name}.out\n'
                          f'cat {folder}/{name}.err >&2\nexit {status}\n')
        script.chmod(0o755)
        return folder / f"{name}.calls"

    return write


def test_the_queue_lists_each_task_and_an_array_it_forgot_as_empty(commands):
    calls = commands("squeue", "7_0|RUNNING\n7_1|PENDING\n7_2|CANCELLED by 0\n")
    assert slurm.Queue().states(["7", "7"]) == {"7_0": "RUNNING", "7_1": "PENDING", "7_2": "CANCELLED"}
    assert Path(calls).read_text().split() == ["--noheader", "--array", "--states", "all", "--jobs", "7",
                                               "--format", "%i|%T"]  # asked once for the array, every state
    commands("squeue", status=1, error="slurm_load_jobs error: Invalid job id specified")
    assert slurm.Queue().states(["7"]) == {}
    commands("squeue", status=1, error="slurm_load_jobs error: Unable to contact slurm controller")
    with pytest.raises(slurm.QueueError, match="Unable to contact slurm controller"):
        slurm.Queue().states(["7"])


def test_accounting_is_asked_once_and_its_absence_named(commands):
    calls = commands("sacct", status=1, error="Slurm accounting storage is disabled")
    queue = slurm.Queue()
    assert queue.accounting is None
    assert queue.accounting_problem("7") == queue.accounting_problem("8") == "Slurm accounting storage is disabled"
    assert queue.accounting is False and len(Path(calls).read_text().splitlines()) == 1
    commands("sacct", "")
    working = slurm.Queue()
    assert working.accounting_problem("7") is None and working.accounting is True


def test_how_a_task_ended_from_scontrol_else_sacct(commands):
    commands("scontrol", "JobId=8 ArrayJobId=7 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode "
                         "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:9\n")
    end = slurm.Queue().ended("7_1")
    assert end == slurm.TaskEnd("FAILED", "0:9", "NonZeroExitCode")
    assert end.describe() == "FAILED (exit code 0:9, reason NonZeroExitCode)"
    # forgotten by the controller: sacct, when there is accounting ...
    commands("scontrol", status=1, error="slurm_load_jobs error: Invalid job id specified")
    commands("sacct", "NODE_FAIL|0:0\n")
    assert slurm.Queue().ended("7_1") == slurm.TaskEnd("NODE_FAIL", "0:0")
    # ... and without it, the state is unknown and the failure says why
    commands("sacct", status=1, error="Slurm accounting storage is disabled")
    queue = slurm.Queue()
    queue.accounting_problem("7")
    end = queue.ended("7_1")
    assert end.state is None and end.describe() == ("in an unknown state (SLURM no longer holds the task, and has "
                                                    "no job accounting to ask)")


def test_a_failure_names_state_exit_code_the_end_of_the_error_log_then_the_log(tmp_path):
    log = tmp_path / "7_1_0_log.err"
    log.write_text("".join(f"line {i}\n" for i in range(30)) + "\n\nsrun: error: node1: task 0: Killed\n")
    text = slurm.failure("7_1", slurm.TaskEnd("FAILED", "0:9", "NonZeroExitCode"), log, lines=3)
    assert text == ("SLURM task 7_1 FAILED (exit code 0:9, reason NonZeroExitCode); its error log ends:\n"
                    "    line 28\n    line 29\n    srun: error: node1: task 0: Killed\n"
                    f"  full log: {log}")
    raised = slurm.failure("7_1", slurm.TaskEnd("FAILED", "1:0"), log, "RuntimeError: x", lines=1)
    assert raised.splitlines()[0] == "SLURM task 7_1 FAILED (exit code 1:0): RuntimeError: x; its error log ends:"
    assert slurm.failure("7_1", slurm.TaskEnd("CANCELLED"), tmp_path / "none.err").splitlines() == [
        "SLURM task 7_1 CANCELLED; it wrote no error log", f"  full log: {tmp_path / 'none.err'}"]


# -- following tasks to their end -------------------------------------------------------------------


class ScriptedQueue:
    """A queue whose squeue answers are given in turn (an exception is raised), the last one
    repeated; ``then()`` runs once they are used up."""

    def __init__(self, answers, ended=slurm.TaskEnd("FAILED", "0:9"), then=None):
        self.answers, self.looks, self.end, self.then = list(answers), 0, ended, then

    def states(self, arrays):
        answer = self.answers[min(self.looks, len(self.answers) - 1)]
        self.looks += 1
        if self.looks == len(self.answers) and self.then:
            self.then()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def ended(self, task):
        return self.end


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(slurm, "RESULT_GRACE", 0.3)
    monkeypatch.setattr(slurm, "QUEUE_PATIENCE", 0.5)


def test_a_task_that_left_the_queue_without_its_result_has_failed(tmp_path, quick):
    done, killed = tmp_path / "done.pkl", tmp_path / "killed.pkl"
    done.write_bytes(b"result")
    queue = ScriptedQueue([{"7_0": "COMPLETED", "7_1": "RUNNING"}, {"7_0": "COMPLETED"}])
    seen = list(slurm.watch({"a": ("7_0", done), "b": ("7_1", killed)}, queue, poll_seconds=0.05))
    assert seen == [("a", None), ("b", slurm.TaskEnd("FAILED", "0:9"))]
    # one that ended (FAILED) while the controller still lists it fails the same way
    queue = ScriptedQueue([{"7_1": "FAILED"}])
    assert list(slurm.watch({"b": ("7_1", killed)}, queue, poll_seconds=0.05)) == [("b", queue.end)]


def test_a_requeued_task_is_followed_on_and_a_late_result_is_taken(tmp_path, quick):
    result = tmp_path / "r.pkl"
    # preempted (an ended state), then pending again as requeued, then running until it writes its
    # result: it never counts as failed, though it was out of the running states longer than the grace
    answers = [{"7_0": "RUNNING"}, {"7_0": "PREEMPTED"}] + [{"7_0": "PENDING"}] * 10 + [{"7_0": "RUNNING"}] * 5
    queue = ScriptedQueue(answers, then=lambda: result.write_bytes(b"result"))
    assert list(slurm.watch({"a": ("7_0", result)}, queue, poll_seconds=0.05)) == [("a", None)]
    assert queue.looks == len(answers)
    # a task gone from the queue whose result appears within the grace is taken, not failed
    late = tmp_path / "late.pkl"
    queue = ScriptedQueue([{}, {}], then=lambda: late.write_bytes(b"result"))
    assert list(slurm.watch({"b": ("7_1", late)}, queue, poll_seconds=0.05)) == [("b", None)]


def test_a_queue_that_cannot_be_read_is_said_and_after_a_while_given_up(tmp_path, quick):
    said = []
    queue = ScriptedQueue([slurm.QueueError("squeue: Unable to contact slurm controller")])
    seen = list(slurm.watch({"a": ("7_0", tmp_path / "r.pkl")}, queue, poll_seconds=0.05, echo=said.append))
    assert said == ["cannot read the SLURM queue (squeue: Unable to contact slurm controller); still waiting"]
    assert [name for name, _ in seen] == ["a"]
    assert seen[0][1].state is None and "could not be read" in seen[0][1].describe()
