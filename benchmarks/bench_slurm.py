"""What `sharpdiv sweep run --executor slurm` does on a one-node SLURM cluster without job accounting
(tests/slurm_cluster.py: Debian's slurm-wlm and munge, started as root in a temporary folder), for the
code of any checkout, so a change can be measured before and after:

1. parallelism: a two-point sweep with the default --jobs (the array line of its batch script, the
   most tasks seen running at once, the wall time);
2. a task killed with kill -9 after its first epoch checkpoint, --retries 1 (how long until the sweep
   ends, or that it was still waiting when given up, and what it said);
3. short limits: the sweep with --time 00:01:00 (refused, or how long it took and how often its task
   was signalled), and a task that sleeps 33 s under a two-minute limit with the checkout's
   slurm_parameters (signalled or not).

Needs root and the packages (`apt-get install slurm-wlm munge`). Run from the repository root:

    python benchmarks/bench_slurm.py [--code CHECKOUT] [--cases 1,2,3] [--give-up SECONDS] [--give-up-short SECONDS]

``--code`` is the checkout whose ``cli`` and ``ensembles`` run (default: this one). Every task uses
one CPU and one torch thread; the load average is printed with the results.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import slurm_cluster  # noqa: E402
from slurm_cluster import ONE, TWO  # noqa: E402  (the cluster tests' sweeps)

# Over a minute of training on one thread of this machine: a one-minute limit must bite.
LONG = ONE.replace("epochs = 6", "epochs = 200")

SLEEPER = """
import sys, time, submitit
from ensembles.studies import sweep
executor = submitit.AutoExecutor(folder=sys.argv[1], cluster="slurm")
executor.update_parameters(**sweep.slurm_parameters(sweep.ClusterRequest(time="2", gpus_per_job=0), "sleep"))
job = executor.submit(time.sleep, 33)
print(job.job_id, job.paths.result_pickle, job.paths.stderr, executor._executor.parameters.get("signal_delay_s"))
"""


def run_sweep(cluster, code: Path, text: str, folder: Path, *options: str, give_up: float, during=None) -> dict:
    """``sweep run`` of the sweep ``text`` with the checkout ``code``; ``during(stderr_path)`` runs
    alongside. Its exit status (None: given up after ``give_up`` s), wall seconds and what it said."""
    file = folder / "sweep.toml"
    file.write_text(text)
    env = {**cluster.env, "PYTHONPATH": str(code)}
    stderr = folder / "stderr.txt"
    command = [sys.executable, "-m", "cli", "sweep", "run", str(file), "--out", str(folder / "out"),
               "--executor", "slurm", "--gpus-per-job", "0", "--cpus-per-job", "1", "--threads", "1",
               "--no-report", *options]
    clock = time.perf_counter()
    with open(stderr, "wb") as stream:
        process = subprocess.Popen(command, cwd=code, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if during:
        during(stderr)
    try:
        status = process.wait(timeout=max(1.0, give_up - (time.perf_counter() - clock)))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        status = None
    return {"status": status, "seconds": time.perf_counter() - clock, "said": stderr.read_text(errors="replace")}


def submitted(cluster, stderr: Path) -> str:
    return cluster.wait_for(lambda: re.search(r"to SLURM as (?:array|job) (\d+)", stderr.read_text()),
                            "the submission", 120).group(1)


def parallelism(cluster, code: Path, folder: Path, give_up: float) -> str:
    most = []

    def watch(stderr):
        array = submitted(cluster, stderr)

        def count():
            while not (folder / "done").exists():
                most.append(sum(state == "RUNNING" for state in cluster.states(array).values()))
                time.sleep(0.2)
        threading.Thread(target=count, daemon=True).start()

    outcome = run_sweep(cluster, code, TWO, folder, "--time", "10", "--retries", "0", give_up=give_up, during=watch)
    (folder / "done").touch()
    scripts = sorted((folder / "out" / ".submitit" / "two").glob("*_submission.sh"))
    arrays = [line for script in scripts for line in script.read_text().splitlines() if "--array" in line]
    return (f"exit {outcome['status']} after {outcome['seconds']:.0f} s; {', '.join(arrays) or 'no array line'}; "
            f"at most {max(most, default=0)} task(s) running at once")


def killed(cluster, code: Path, folder: Path, give_up: float) -> str:
    def kill(stderr):
        job = submitted(cluster, stderr)  # one task: a job of its own (older code called it an array)
        cluster.wait_for((folder / "out" / "sgd-s3.4" / "train" / "member-0.pt").is_file, "a checkpoint", 180, 0.02)
        pid = cluster.wait_for(lambda: slurm_cluster.task_process(job) or slurm_cluster.task_process(f"{job}_0"),
                               "the task", 10, 0.02)
        os.kill(pid, signal.SIGKILL)

    outcome = run_sweep(cluster, code, ONE, folder, "--time", "10", "--retries", "1", give_up=give_up, during=kill)
    said = outcome["said"]
    ended = (f"still waiting when given up after {outcome['seconds']:.0f} s" if outcome["status"] is None
             else f"exit {outcome['status']} after {outcome['seconds']:.0f} s")
    sacct = len(set(re.findall(r"Call #(\d+) - Bypassing sacct error", said)))  # each is logged twice
    failure = re.search(r"sgd-s3\.4: failed: (.*?)(?:\nretrying|\Z)", said, re.S)
    return (f"{ended}; {sacct} failed sacct call(s) reported by submitit; "
            + (f"failure said:\n{failure.group(1).strip()}" if failure else "no failure reported"))


def short_limit(cluster, code: Path, folder: Path, give_up: float) -> str:
    outcome = run_sweep(cluster, code, LONG, folder, "--time", "00:01:00", "--retries", "0", give_up=give_up)
    logs = [path.read_text(errors="replace") for path in (folder / "out" / ".submitit").rglob("*_log.*")]
    # submitit may log a line twice (two handlers); count each line once
    caught = len({line for text in logs for line in text.splitlines() if "Caught signal" in line})
    killed = sum(text.count("User defined signal 2") for text in logs)
    said = [line for line in outcome["said"].splitlines() if "sacct" not in line and line.strip()]
    ended = "still waiting when given up" if outcome["status"] is None else f"exit {outcome['status']}"
    return (f"--time 00:01:00: {ended} after {outcome['seconds']:.0f} s; warning signal caught {caught} time(s), "
            f"killed a task before submitit's handler {killed} time(s); last said: " + " | ".join(said[-2:]))


def sleeper(cluster, code: Path, folder: Path) -> str:
    env = {**cluster.env, "PYTHONPATH": str(code)}
    done = subprocess.run([sys.executable, "-c", SLEEPER, str(folder)], env=env, cwd=code, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0:
        return f"could not submit: {done.stderr.strip().splitlines()[-1:]}"
    job, result, log, delay = done.stdout.split()
    cluster.wait_for(lambda: cluster.states(job).get(job, "GONE") in ENDED, "the sleeper to end", 240)
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    ended = cluster.job(job)
    if "Caught signal" in text:
        signalled = "signalled (caught)"
    elif "User defined signal 2" in text:
        signalled = "killed by the signal before submitit's handler was installed"
    else:
        signalled = "not signalled"
    return (f"sleep 33 under --time 2 (signal asked {delay} s before the limit): {signalled}; "
            f"{ended.get('JobState')} exit {ended.get('ExitCode')}, result {'written' if Path(result).exists() else 'missing'}")


ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "GONE"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to run (default: this one)")
    parser.add_argument("--cases", default="1,2,3", help="which cases to run (comma list of 1, 2, 3)")
    parser.add_argument("--give-up", type=float, default=180.0, help="seconds before a waiting sweep is stopped")
    parser.add_argument("--give-up-short", type=float, default=900.0,
                        help="the same for the sweep under a one-minute limit (each requeue waits 2 minutes)")
    arguments = parser.parse_args()
    reason = slurm_cluster.unavailable()
    if reason:
        sys.exit(f"bench_slurm: {reason}; {slurm_cluster.HOW_TO_RUN}")
    code = arguments.code.resolve()
    print(f"code: {code}; load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    with slurm_cluster.one_node_cluster(cpus=2) as cluster, tempfile.TemporaryDirectory() as scratch:
        chosen = arguments.cases.split(",")
        for name, case in (("1. parallelism", parallelism), ("2. kill -9", killed),
                           ("3. short limit", short_limit)):
            if name[0] not in chosen:
                continue
            folder = Path(scratch) / name.split()[1]
            folder.mkdir()
            give_up = arguments.give_up_short if case is short_limit else arguments.give_up
            print(f"{name}: {case(cluster, code, folder, give_up)}", flush=True)
            for job in cluster.jobs():  # nothing left running into the next case
                cluster.run("scancel", job, check=False)
        if "3" in chosen:
            folder = Path(scratch) / "sleeper"
            folder.mkdir()
            print(f"3. signal: {sleeper(cluster, code, folder)}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
