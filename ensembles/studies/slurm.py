"""SLURM as a sweep uses it: what each array task asks for, when SLURM warns a task before its time
limit, and how a sweep follows its tasks to their end.

submitit writes the batch script and runs each task; on its own it follows a task through ``sacct``,
SLURM's job accounting. Many clusters, and every small test cluster, run without accounting:
``sacct`` fails, submitit reads the unknown state as "still running", and a task that died
(``kill -9``, a lost node) is waited for forever. So a sweep follows its tasks through the queue
(:func:`watch`): a task that has left the queue (``squeue``) without writing its result has failed,
and ``scontrol show job`` (or ``sacct``, when there is accounting and SLURM has forgotten the task)
says how it ended (:class:`TaskEnd`); the failure names that state, the exit code and the last
lines of the task's error log (:func:`failure`).

**Time limits.** A task asks for ``SIGUSR2`` shortly before its time limit
(:func:`signal_delay_seconds`: a tenth of the limit, at most two minutes); submitit then requeues it
and it resumes from its run folder. SLURM may send that signal up to a minute earlier than asked
(sbatch(1), ``--signal``), so a limit under which a task could be signalled before it has run half a
minute is refused (:func:`check_time_limit`): it would be requeued before saving anything, again
and again.
"""
from __future__ import annotations

import itertools
import math
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from landscape.errors import InputError

__all__ = [
    "ClusterRequest",
    "ENDED",
    "Queue",
    "TaskEnd",
    "check_time_limit",
    "failure",
    "signal_delay_seconds",
    "slurm_parameters",
    "timeout_minutes",
    "watch",
]

#: The warning signal comes this fraction of the time limit before it ...
SIGNAL_FRACTION = 0.1
#: ... and never more than this many seconds before it (submitit's own choice for long limits).
LONGEST_SIGNAL_DELAY = 120
#: SLURM may send the signal up to this many seconds earlier than asked (sbatch(1), ``--signal``).
SIGNAL_EARLY = 60
#: A task must be able to run this long before it could be signalled: starting Python and torch and
#: loading a dataset take a good part of it.
SHORTEST_RUN = 30
#: States (squeue's ``%T``, scontrol's ``JobState``) in which a task has ended; every other state
#: (PENDING, RUNNING, COMPLETING, REQUEUED, SUSPENDED ...) still holds it in the queue.
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "REVOKED", "SPECIAL_EXIT", "TIMEOUT"})
#: Seconds a task that has left the queue is given for its result to appear (a shared file system
#: shows a file written on another node late) before it counts as failed.
RESULT_GRACE = 10.0
#: Seconds between looks at the queue: from the sweep's poll interval, growing with the time waited
#: (a tenth of it) up to this bound, so a long sweep does not load the controller.
LONGEST_POLL = 60.0
#: Seconds ``squeue`` may keep failing (controller down) before the tasks still followed count as failed.
QUEUE_PATIENCE = 900.0
#: Lines of a failed task's error log quoted in its failure.
LOG_LINES = 10


@dataclass(frozen=True)
class ClusterRequest:
    """What each SLURM task asks for. ``time`` is ``HH:MM:SS``, ``D-HH:MM:SS`` or minutes."""

    partition: str | None = None
    gpus_per_job: int = 1
    time: str = "24:00:00"
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int | None = None
    setup: tuple[str, ...] = ()


def timeout_minutes(text: str | int | float) -> int:
    """SLURM time ``[D-]HH:MM:SS``, ``MM:SS`` or minutes as whole minutes (rounded up)."""
    value = str(text).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not match:
        raise InputError(f"--time {text!r}: use HH:MM:SS, D-HH:MM:SS or minutes, e.g. --time 24:00:00")
    days, first, second, third = match.groups()
    parts = [int(first)] + [int(p) for p in (second, third) if p is not None]
    if len(parts) == 1 and days is None:
        minutes = parts[0]  # plain minutes, as SLURM reads "--time 90"
        seconds = 0
    elif len(parts) == 1:
        minutes, seconds = 60 * parts[0], 0  # D-HH
    elif len(parts) == 2:
        if days is None:
            minutes, seconds = parts  # MM:SS
        else:
            minutes, seconds = 60 * parts[0] + parts[1], 0  # D-HH:MM
    else:
        minutes, seconds = 60 * parts[0] + parts[1], parts[2]
    total = 24 * 60 * int(days or 0) + minutes + math.ceil(seconds / 60)
    if total < 1:
        raise InputError(f"--time {text!r} is shorter than a minute")
    return total


def signal_delay_seconds(minutes: int) -> int:
    """Seconds before a time limit of ``minutes`` at which a task asks for its warning signal: a
    tenth of the limit, at most two minutes (6 s for one minute, 120 s from 20 minutes on).

    >>> signal_delay_seconds(2), signal_delay_seconds(10), signal_delay_seconds(24 * 60)
    (12, 60, 120)
    """
    return min(LONGEST_SIGNAL_DELAY, int(minutes * 60 * SIGNAL_FRACTION))


def _earliest_signal(minutes: int) -> int:
    """The earliest second of a task's run at which SLURM may send it the warning signal."""
    return minutes * 60 - signal_delay_seconds(minutes) - SIGNAL_EARLY


def check_time_limit(text: str | int | float) -> int:
    """``--time`` as whole minutes, refused in one line when SLURM could signal a task before it has
    run :data:`SHORTEST_RUN` seconds (so it would be requeued before it saved anything).

    >>> check_time_limit("00:02:00")
    2
    """
    minutes = timeout_minutes(text)
    if _earliest_signal(minutes) < SHORTEST_RUN:
        shortest = next(m for m in itertools.count(minutes + 1) if _earliest_signal(m) >= SHORTEST_RUN)
        raise InputError(f"--time {text} is too short for a SLURM task to save its work: it asks for the requeue "
                         f"signal {signal_delay_seconds(minutes)} s before the limit, SLURM may send it up to "
                         f"{SIGNAL_EARLY} s earlier, so the task could be stopped before it has run {SHORTEST_RUN} s; "
                         f"ask for --time {shortest} (minutes) or more")
    return minutes


def slurm_parameters(request: ClusterRequest, name: str, jobs: int | None = None, tasks: int | None = None) -> dict:
    """submitit's ``AutoExecutor.update_parameters`` arguments for ``request``: one task per grid
    point with its GPUs, CPUs and time, the warning signal :func:`signal_delay_seconds` before the
    limit; at most ``jobs`` tasks of the array at once (default: all ``tasks`` of it)."""
    if request.gpus_per_job < 0:
        raise InputError(f"--gpus-per-job must be >= 0, got {request.gpus_per_job}")
    minutes = check_time_limit(request.time)
    parameters = {"name": f"sharpdiv-{name}", "timeout_min": minutes,
                  "gpus_per_node": request.gpus_per_job, "tasks_per_node": 1, "nodes": 1,
                  "slurm_signal_delay_s": signal_delay_seconds(minutes)}
    if request.cpus_per_job:
        parameters["cpus_per_task"] = request.cpus_per_job
    if request.mem_gb:
        parameters["mem_gb"] = request.mem_gb
    for option in ("partition", "account", "qos", "constraint"):
        if getattr(request, option):
            parameters[f"slurm_{option}"] = getattr(request, option)
    parallel = request.array_parallelism or jobs or tasks
    if parallel:
        parameters["slurm_array_parallelism"] = int(parallel)
    if request.setup:
        parameters["slurm_setup"] = list(request.setup)
    return parameters


# ----------------------------------------------------------------------------------------------
# following the tasks


@dataclass(frozen=True)
class TaskEnd:
    """How a task ended, as SLURM tells it: its state (FAILED, CANCELLED, TIMEOUT, NODE_FAIL ...), its
    exit code (``code:signal``) and reason; each None where SLURM does not say (``note`` says why)."""

    state: str | None = None
    exit_code: str | None = None
    reason: str | None = None
    note: str | None = None

    def describe(self) -> str:
        """``FAILED (exit code 0:9, reason NonZeroExitCode)``, or why the state is unknown."""
        if self.state is None:
            return "in an unknown state" + (f" ({self.note})" if self.note else "")
        details = [f"exit code {self.exit_code}"] if self.exit_code else []
        if self.reason and self.reason != "None":
            details.append(f"reason {self.reason}")
        return self.state + (f" ({', '.join(details)})" if details else "")


class QueueError(RuntimeError):
    """``squeue`` failed (its message)."""


class Queue:
    """The SLURM commands a sweep follows its tasks with (``squeue``, ``scontrol``, ``sacct``), each
    bounded by ``timeout`` seconds. Whether there is job accounting is learnt once
    (:meth:`accounting_problem`)."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.accounting: bool | None = None  # not checked yet
        self._accounting_problem: str | None = None

    def _run(self, *command: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=self.timeout)
        except FileNotFoundError:
            return subprocess.CompletedProcess(command, 127, "", f"{command[0]} is not installed")
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(command, 124, "", f"{command[0]} gave no answer in {self.timeout:g} s")

    def accounting_problem(self, job_id: str) -> str | None:
        """Why ``sacct`` cannot say how the tasks of ``job_id`` went (its message), or None when it can."""
        if self.accounting is None:
            done = self._run("sacct", "--noheader", "--allocations", "--parsable2", "--jobs", str(job_id),
                             "--format", "JobID")
            self.accounting = done.returncode == 0
            self._accounting_problem = None if self.accounting else _first_line(done, "sacct failed")
        return self._accounting_problem

    def states(self, array_ids: Iterable[str]) -> dict[str, str]:
        """``{task id: state}`` of every task of the arrays the controller still holds (waiting,
        running, or ended recently); a task it no longer lists has left the queue."""
        states = {}
        for array in dict.fromkeys(array_ids):
            done = self._run("squeue", "--noheader", "--array", "--states", "all", "--jobs", array,
                             "--format", "%i|%T")
            if done.returncode != 0:
                if "invalid job id" in (done.stderr + done.stdout).lower():
                    continue  # the controller has forgotten every task of it
                raise QueueError(f"squeue: {_first_line(done, 'failed')}")
            for line in done.stdout.splitlines():
                task, _, state = line.strip().partition("|")
                if task:
                    states[task] = state.split()[0] if state.split() else ""
        return states

    def ended(self, task_id: str, settle: float = 0.0) -> TaskEnd:
        """How ``task_id`` ended: ``scontrol show job`` while the controller holds it (waiting up to
        ``settle`` seconds for it to leave a state such as COMPLETING), else ``sacct``."""
        deadline = time.monotonic() + settle
        fields: dict[str, str] = {}
        while True:
            done = self._run("scontrol", "--oneliner", "show", "job", str(task_id))
            fields = dict(re.findall(r"(\w+)=(\S*)", done.stdout)) if done.returncode == 0 else {}
            if not fields or fields.get("JobState") in ENDED or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        if fields.get("JobState"):
            return TaskEnd(fields["JobState"], fields.get("ExitCode"), fields.get("Reason"))
        if self.accounting is not False:
            done = self._run("sacct", "--noheader", "--allocations", "--parsable2", "--jobs", str(task_id),
                             "--format", "State,ExitCode")
            rows = [line.split("|") for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []
            if rows and len(rows[-1]) >= 2:
                return TaskEnd(rows[-1][0].split()[0], rows[-1][1])
        return TaskEnd(note="SLURM no longer holds the task" + (", and has no job accounting to ask"
                                                                 if self.accounting is False else ""))


def _first_line(done: subprocess.CompletedProcess, default: str) -> str:
    lines = [line.strip() for line in (done.stderr or "").splitlines() + (done.stdout or "").splitlines()
             if line.strip()]
    return lines[0] if lines else f"{default} (exit status {done.returncode})"


def watch(tasks: Mapping[str, tuple[str, Path]], queue: Queue, *, poll_seconds: float = 2.0,
          echo: Callable[[str], None] | None = None) -> Iterator[tuple[str, TaskEnd | None]]:
    """Follow SLURM tasks until each has ended. ``tasks`` maps a name to the task's id (``123_4``)
    and the file its result is written to. Yields ``(name, None)`` once the result is there, and
    ``(name, TaskEnd)`` for a task that has been out of the queue, or in an ended state, for
    :data:`RESULT_GRACE` seconds without it; a task requeued meanwhile (back to PENDING) is followed
    on. Looks every ``poll_seconds``, less often as the wait grows (:data:`LONGEST_POLL`). When
    ``squeue`` fails, ``echo`` says so and the wait goes on; after :data:`QUEUE_PATIENCE` seconds of
    failures the tasks still followed end unknown."""
    say = echo or (lambda message: None)
    waiting = dict(tasks)
    started = time.monotonic()
    left: dict[str, float] = {}  # when each task was first seen out of the queue
    failing_since: float | None = None
    told = None
    while waiting:
        for name in [name for name, (_, result) in waiting.items() if Path(result).exists()]:
            del waiting[name]
            yield name, None
        if not waiting:
            return
        now = time.monotonic()
        try:
            states = queue.states(task.split("_")[0] for task, _ in waiting.values())
        except QueueError as error:
            failing_since = now if failing_since is None else failing_since
            if str(error) != told:
                told = str(error)
                say(f"cannot read the SLURM queue ({error}); still waiting")
            if now - failing_since >= QUEUE_PATIENCE:
                for name in list(waiting):
                    del waiting[name]
                    yield name, TaskEnd(note=f"the queue could not be read for {QUEUE_PATIENCE / 60:g} minutes: {error}")
                return
        else:
            failing_since, told = None, None
            for name, (task, _) in waiting.items():
                if states.get(task, "ENDED") in ENDED | {"ENDED"}:
                    left.setdefault(name, now)
                else:
                    left.pop(name, None)  # (still, or again) waiting or running
            for name in [name for name in waiting if name in left and now - left[name] >= RESULT_GRACE]:
                task, result = waiting[name]
                if Path(result).exists():
                    continue  # written meanwhile: yielded on the next look
                del waiting[name]
                yield name, queue.ended(task)
        pause = min(LONGEST_POLL, max(poll_seconds, (time.monotonic() - started) / 10))
        if left:
            pause = min(pause, max(0.5, RESULT_GRACE / 4))
        time.sleep(pause)


def failure(task_id: str, end: TaskEnd, log: Path, error: str | None = None, lines: int = LOG_LINES) -> str:
    """A failed task as the sweep reports it: its SLURM state and exit code (and the error it raised,
    when it raised one), the last ``lines`` lines of its error log, then where the whole log is."""
    head = f"SLURM task {task_id} {end.describe()}" + (f": {error}" if error else "")
    tail = _last_lines(Path(log), lines)
    if tail:
        head += "; its error log ends:\n" + "\n".join(f"    {line}" for line in tail)
    else:
        head += "; its error log is empty" if Path(log).is_file() else "; it wrote no error log"
    return f"{head}\n  full log: {log}"


def _last_lines(path: Path, count: int, width: int = 300) -> list[str]:
    """The last ``count`` non-blank lines of a text file (at most ``width`` characters each)."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, 2)
            stream.seek(max(0, stream.tell() - 64 * 1024))
            text = stream.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    found = [line.rstrip() for line in text.splitlines() if line.strip()][-count:]
    return [line if len(line) <= width else line[:width - 3] + "..." for line in found]
