"""Sweeps on a real one-node SLURM cluster (Debian's slurm-wlm 22.05 and munge, started by
tests/slurm_cluster.py, without job accounting): every task of the array runs at once; a task
requeued with ``scontrol requeue`` or preempted with SIGUSR2 resumes from its run folder to the
members ``--executor local`` trains; a task killed with ``kill -9`` is seen to have failed although
``sacct`` cannot say so, its failure names its SLURM state, exit code and error log, and
``--retries 1`` finishes it; a time limit too short to checkpoint is refused, and the warning signal
of a short one comes late enough. Skipped without root or the packages (saying how to run them),
failed under CI (``CI=true``, as .ci/run sets), which installs them."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import slurm_cluster
from slurm_cluster import ONE, TWO
from ensembles.runs import run_folder
from ensembles.studies import slurm, sweep

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cluster():
    slurm_cluster.require_cluster()
    with slurm_cluster.one_node_cluster(cpus=2) as running:
        yield running


def test_without_the_packages_the_cluster_tests_skip_saying_how_to_run_them_but_fail_under_ci(monkeypatch):
    monkeypatch.setattr(slurm_cluster, "unavailable", lambda: "munged not installed")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"munged not installed; to run these tests: as root, "
                                                    r"`apt-get install slurm-wlm munge`"):
        slurm_cluster.require_cluster()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI runs the SLURM cluster tests, but munged not installed"):
        slurm_cluster.require_cluster()
    monkeypatch.setattr(slurm_cluster, "unavailable", lambda: None)
    assert slurm_cluster.require_cluster() is None


@pytest.fixture(scope="module")
def local_runs(cluster, tmp_path_factory):
    """The two grid points trained and measured by ``--executor local``, one thread, in this process."""
    root = tmp_path_factory.mktemp("local")
    result = sweep.run_sweep(sweep.parse_sweep(TWO), root, executor="local", device="cpu")
    assert not result.failures
    return root


def _start_sweep(cluster, file: Path, out: Path, *options: str):
    """``sharpdiv sweep run FILE --executor slurm`` in its own process against the cluster (one
    CPU and one torch thread per task, no GPU); its output goes to files."""
    stdout, stderr = out.parent / f"{out.name}-stdout.txt", out.parent / f"{out.name}-stderr.txt"
    command = [sys.executable, "-m", "cli", "sweep", "run", str(file), "--out", str(out), "--executor", "slurm",
               "--gpus-per-job", "0", "--cpus-per-job", "1", "--threads", "1", "--no-report", *options]
    with open(stdout, "wb") as out_stream, open(stderr, "wb") as err_stream:
        process = subprocess.Popen(command, cwd=ROOT, env=cluster.env, stdout=out_stream, stderr=err_stream)
    return process, stdout, stderr


def _finish(cluster, process, stderr: Path, timeout: float) -> int:
    """The sweep's exit status; after ``timeout`` s it is killed (by its PID) and the test fails."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"sweep run still waiting after {timeout:g} s:\n{stderr.read_text()[-3000:]}\n"
                             + cluster.logs()) from None


def _submitted(cluster, stderr: Path) -> str:
    """The array (or the one job) the sweep submitted, as it says."""
    found = cluster.wait_for(lambda: re.search(r"to SLURM as (?:array|job) (\d+)", stderr.read_text()),
                             "the sweep to submit its tasks", 120)
    return found.group(1)


def _first_checkpoint(cluster, out: Path, job: str, task: str) -> int:
    """Wait for ``job``'s first epoch checkpoint, then return the PID of the task training it."""
    checkpoint = out / job / "train" / "member-0.pt"
    cluster.wait_for(checkpoint.is_file, f"{job}'s first epoch checkpoint", 180, every=0.02)
    return cluster.wait_for(lambda: slurm_cluster.task_process(task), f"the process of task {task}", 10, every=0.02)


def _members(path: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(path.glob("member-*.safetensors"))}


def _same_rows(path: Path, reference: Path) -> None:
    """The results tables of two run folders hold the same rows (keys) with the same values (NaN where
    a metric is undefined on the slice, in both)."""
    tables = [run_folder.read_results(folder, current_only=True).sort_values("key") for folder in (path, reference)]
    assert tables[0]["key"].tolist() == tables[1]["key"].tolist() and len(tables[0]) > 0
    np.testing.assert_array_equal(tables[0]["value"].to_numpy(), tables[1]["value"].to_numpy())


def _release_requeued(cluster, task: str) -> None:
    """SLURM holds a requeued task back two minutes (its begin time); let it start now."""
    cluster.wait_for(lambda: cluster.states(task.split("_")[0]).get(task) == "PENDING", f"{task} to be requeued", 60)
    cluster.run("scontrol", "update", f"JobId={task}", "StartTime=now")


def test_every_task_runs_at_once_and_a_requeued_or_preempted_task_resumes_to_the_local_members(
        cluster, local_runs, tmp_path):
    file = tmp_path / "two.toml"
    file.write_text(TWO)
    out = tmp_path / "slurm"
    process, stdout, stderr = _start_sweep(cluster, file, out, "--time", "10", "--retries", "0")
    array = _submitted(cluster, stderr)
    tasks = {"sgd-s3.4": f"{array}_0", "sam-rho0.05-s3.4": f"{array}_1"}
    # No --jobs: the scheduler runs both tasks together (the node has a CPU for each).
    cluster.wait_for(lambda: set(cluster.states(array).values()) == {"RUNNING"} and len(cluster.states(array)) == 2,
                     "both tasks running at once", 120, every=0.05)
    requeued, preempted = tasks["sgd-s3.4"], tasks["sam-rho0.05-s3.4"]
    first = _first_checkpoint(cluster, out, "sgd-s3.4", requeued)
    os.kill(first, signal.SIGSTOP)  # held in the middle of its training
    second = _first_checkpoint(cluster, out, "sam-rho0.05-s3.4", preempted)
    os.kill(second, signal.SIGSTOP)

    # Preemption: SIGUSR2, as SLURM sends before a time limit; submitit checkpoints and requeues the task.
    cluster.run("scancel", "--signal=USR2", preempted)
    os.kill(second, signal.SIGCONT)
    # Requeue by hand. SLURM continues the task and sends SIGTERM, which submitit ignores, and SIGKILL
    # a few seconds later; stopping it again and again keeps it where it was until then.
    cluster.run("scontrol", "requeue", requeued)
    deadline = time.monotonic() + 60
    while slurm_cluster.alive(first):
        assert time.monotonic() < deadline, "the requeued task was not killed\n" + cluster.logs()
        os.kill(first, signal.SIGSTOP)
        time.sleep(0.01)
    for task in (requeued, preempted):
        _release_requeued(cluster, task)
    assert _finish(cluster, process, stderr, 300) == 0, stderr.read_text()[-3000:]

    said = stderr.read_text()
    assert "2 jobs into" in said and "(slurm executor, every task at once)" in said
    assert "SLURM job accounting is unavailable (sacct: Slurm accounting storage is disabled)" in said
    script = (out / ".submitit" / "two" / f"{array}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --signal=USR2@60" in script
    for task in (requeued, preempted):
        assert cluster.job(task)["Restarts"] == "1", cluster.job(task)
    assert "Caught signal SIGUSR2" in (out / ".submitit" / "two" / f"{preempted}_0_log.err").read_text()
    trained = {(record["job"], record["action"]) for record in sweep.read_log(out) if record["step"] == "train"}
    assert trained == {("sgd-s3.4", "resumed"), ("sam-rho0.05-s3.4", "resumed")}
    for job in tasks:
        assert _members(out / job) == _members(local_runs / job) and len(_members(out / job)) == 2, job
        _same_rows(out / job, local_runs / job)

    # sweep status and sweep report read what the tasks wrote
    status = CliRunner().invoke(cli.main, ["sweep", "status", str(file), "--root", str(out)])
    assert status.exit_code == 0, status.output
    rows = [line.split() for line in status.output.splitlines()]
    assert rows[0] == ["run", "training", "evaluate"]
    assert sorted(rows[1:]) == [["sam-rho0.05-s3.4", "done", "measured"], ["sgd-s3.4", "done", "measured"]]
    report = CliRunner().invoke(cli.main, ["sweep", "report", str(file), "--root", str(out),
                                           "--out", str(tmp_path / "report")])
    assert report.exit_code == 0 and "2 of 2 runs reported" in report.output, report.output
    assert (tmp_path / "report" / "index.html").is_file()


def test_a_task_killed_without_accounting_is_reported_with_its_log_and_retried(cluster, local_runs, tmp_path):
    file = tmp_path / "one.toml"
    file.write_text(ONE)
    out = tmp_path / "slurm"
    process, stdout, stderr = _start_sweep(cluster, file, out, "--time", "10", "--retries", "1")
    task = _submitted(cluster, stderr)  # one job alone: submitit submits no array
    os.kill(_first_checkpoint(cluster, out, "sgd-s3.4", task), signal.SIGKILL)
    assert _finish(cluster, process, stderr, 300) == 0, stderr.read_text()[-3000:]

    said = stderr.read_text()
    assert "SLURM job accounting is unavailable" in said
    log = out / ".submitit" / "two" / f"{task}_0_log.err"
    failed = said.split("sgd-s3.4: failed: ", 1)[1]
    head, *quoted = failed.split("\n  full log: ")[0].splitlines()
    assert head.startswith(f"SLURM task {task} FAILED (exit code ") and head.endswith("; its error log ends:")
    assert quoted and all(line.startswith("    ") for line in quoted)
    assert [line.strip() for line in quoted] == [line.strip() for line in log.read_text().splitlines()
                                                 if line.strip()][-len(quoted):]
    assert f"\n  full log: {log}\n" in said
    assert "retrying 1 failed job(s) (attempt 2 of 2)" in said
    assert "1 of 1 jobs done (1 trained now" in stdout.read_text()
    trained = [record["action"] for record in sweep.read_log(out) if record["step"] == "train"]
    assert trained == ["resumed"]  # the killed attempt recorded nothing; the retry continued it
    assert _members(out / "sgd-s3.4") == _members(local_runs / "sgd-s3.4")


def test_a_limit_too_short_to_checkpoint_is_refused_and_a_short_ones_signal_comes_late(cluster, tmp_path):
    file = tmp_path / "one.toml"
    file.write_text(ONE)
    before = cluster.jobs()
    process, stdout, stderr = _start_sweep(cluster, file, tmp_path / "refused", "--time", "00:01:00")
    assert _finish(cluster, process, stderr, 120) == 2
    lines = [line for line in stderr.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and "--time 00:01:00 is too short" in lines[0] and "--time 2" in lines[0], lines
    assert cluster.jobs() == before and not (tmp_path / "refused").exists()  # nothing submitted, nothing made

    # Two minutes: the signal is asked 12 s before the limit; SLURM sends it up to 60 s early, so
    # not in the first 48 s. A task that sleeps 33 s is not signalled. (Asked 120 s before the limit,
    # as it was, SLURM signals at its first check, within 30 s of the start: the task fails, or is
    # killed outright when the signal comes before submitit has set up its handler.)
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
    executor.update_parameters(**slurm.slurm_parameters(slurm.ClusterRequest(time="2", gpus_per_job=0), "sleep"))
    environment = os.environ.copy()
    os.environ.update(SLURM_CONF=cluster.env["SLURM_CONF"], PATH=cluster.env["PATH"])
    try:
        job = executor.submit(time.sleep, 33)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    cluster.wait_for(lambda: job.paths.result_pickle.exists() or cluster.states(job.job_id).get(job.job_id) in
                     slurm.ENDED, "the sleeping task to end", 150, every=0.5)
    log = job.paths.stderr.read_text() if job.paths.stderr.exists() else ""
    assert "Caught signal" not in log and "User defined signal 2" not in log, log[-2000:]
    assert job.paths.result_pickle.exists() and job.result() is None, log[-2000:]
    assert cluster.job(job.job_id)["Restarts"] == "0"
