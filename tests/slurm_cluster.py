"""A one-node SLURM cluster for the tests, from Debian's packages (slurm-wlm, munge), started by
hand as root in a temporary folder and stopped by PID, and the SLURM commands run against it.

Nothing outside the folder is used: munged listens on its own socket with a key made for it,
slurmctld and slurmd on free local ports, with the configuration :data:`SLURM_CONF` (no cgroups,
no accounting). Every command the tests and the sweep run finds it through ``SLURM_CONF`` in
:attr:`Cluster.env`; :func:`task_process` finds the Python process of a task, to stop, signal or
kill it. Test modules import it by name (``import slurm_cluster``), benchmarks/bench_slurm.py from
tests/.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: What the cluster runs on; missing ones make the tests skip (or fail under CI).
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
#: How to get them, said when the tests skip.
HOW_TO_RUN = ("as root, `apt-get install slurm-wlm munge` (Debian 12: SLURM 22.05), then "
              "`pytest tests/ensembles/studies/test_slurm_cluster.py`; .ci/run does so")
#: Where Debian puts the daemons (root's PATH has it; others' may not).
_SBIN = ("/usr/sbin", "/sbin")

#: One node, one partition, root as SLURM's user; process tracking by /proc (no cgroups in a
#: container), no task binding, no job accounting. KillWait=0: a cancelled or requeued task is
#: killed a few seconds after SIGTERM (which submitit ignores) rather than 30.
SLURM_CONF = """\
ClusterName=sharpdivtest
SlurmctldHost=localhost
SlurmctldPort={controller_port}
SlurmdPort={node_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def unavailable() -> str | None:
    """Why a cluster cannot be started here (not root, a program missing), or None."""
    if os.geteuid() != 0:
        return "the SLURM cluster tests start slurmctld and slurmd as root, and this is not root"
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    missing = [program for program in PROGRAMS if shutil.which(program, path=path) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    return None


def require_cluster() -> None:
    """Skip the calling test when no cluster can be started here, saying why and how to run it; under
    CI (``CI=true``), which installs the packages, fail instead."""
    import pytest

    reason = unavailable()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI runs the SLURM cluster tests, but {reason}: .ci/run installs slurm-wlm and munge")
    pytest.skip(f"{reason}; to run these tests: {HOW_TO_RUN}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Cluster:
    """A running one-node cluster: its folder, the environment its commands need, its daemons."""

    folder: Path
    env: dict
    daemons: dict = field(default_factory=dict)  # name -> subprocess.Popen

    def run(self, *command: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A SLURM command against this cluster (``squeue``, ``scontrol`` ...), bounded in time."""
        done = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}\n"
                                 + self.logs())
        return done

    def states(self, job: str) -> dict[str, str]:
        """``{task id: state}`` of every task of array ``job`` the controller holds."""
        done = self.run("squeue", "--noheader", "--array", "--states", "all", "--jobs", job, "--format", "%i|%T",
                        check=False)
        return dict(line.split("|", 1) for line in done.stdout.split() if "|" in line)

    def job(self, task: str) -> dict[str, str]:
        """``scontrol show job`` of ``task`` as ``{field: value}`` (JobState, Restarts, ExitCode ...)."""
        import re

        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "--oneliner", "show", "job", task).stdout))

    def jobs(self) -> list[str]:
        """Every job id the controller holds."""
        done = self.run("squeue", "--noheader", "--states", "all", "--format", "%A", check=False)
        return sorted(set(done.stdout.split()))

    def wait_for(self, condition, what: str, timeout: float, every: float = 0.2):
        """``condition()`` once it is truthy; an AssertionError naming ``what`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:g} s for {what}\n" + self.logs())
            time.sleep(every)

    def logs(self, lines: int = 15) -> str:
        """The end of each daemon's log, for a failure message."""
        shown = []
        for name in ("munged", "slurmctld", "slurmd"):
            path = self.folder / f"{name}.log"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.is_file() else []
            shown.append(f"--- {name}.log\n" + "\n".join(text))
        return "\n".join(shown)

    def stop(self) -> None:
        """Cancel every job, wait for the node to kill their processes, then stop each daemon by PID
        (SIGTERM, then SIGKILL after 15 s)."""
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                ids = self.jobs()
                if ids:
                    self.run("scancel", *ids, check=False)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self._job_processes():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.daemons.get(name)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        for pid in self._job_processes():  # a task the node failed to kill: it still holds our SLURM_CONF
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _job_processes(self) -> list[int]:
        """PIDs of the processes started for this cluster's jobs: slurmstepd and the tasks (a job id in
        their environment) whose environment names this cluster's configuration."""
        mine = f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
        skip = {os.getpid(), *(process.pid for process in self.daemons.values())}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in skip:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                stepd = (entry / "comm").read_bytes().strip() == b"slurmstepd"
                if mine in environ and (stepd or any(item.startswith(b"SLURM_JOB_ID=") for item in environ)):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


@contextlib.contextmanager
def one_node_cluster(cpus: int = 2):
    """A one-node cluster with ``cpus`` CPUs, up and idle; every daemon stopped by PID on exit, the
    folder removed."""
    # A short path under /tmp: munged's socket path must fit a socket address, and munged wants
    # every folder above its socket searchable by all.
    folder = Path(tempfile.mkdtemp(prefix="sharpdiv-slurm-"))
    folder.chmod(0o755)
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    env = {**os.environ, "PATH": path, "SLURM_CONF": str(folder / "slurm.conf")}
    cluster = Cluster(folder=folder, env=env)
    try:
        for sub in ("state", "spool"):
            (folder / sub).mkdir()
        key = folder / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        (folder / "slurm.conf").write_text(SLURM_CONF.format(folder=folder, controller_port=_free_port(),
                                                             node_port=_free_port(), cpus=cpus))
        cluster.daemons["munged"] = _start(cluster, "munged", "--foreground", f"--socket={folder}/munge.socket",
                                           f"--key-file={key}", f"--pid-file={folder}/munged.pid",
                                           f"--seed-file={folder}/munged.seed")
        cluster.wait_for(lambda: (folder / "munge.socket").exists(), "munged's socket", 20)
        cluster.daemons["slurmctld"] = _start(cluster, "slurmctld", "-D", "-i")
        cluster.wait_for(lambda: cluster.run("scontrol", "ping", check=False).stdout.count("UP") > 0,
                         "slurmctld to answer", 30, every=0.5)
        cluster.daemons["slurmd"] = _start(cluster, "slurmd", "-D", "-N", "localhost")
        cluster.wait_for(lambda: cluster.run("sinfo", "--noheader", "--format", "%T", check=False).stdout.strip()
                         == "idle", "the node to be idle", 60, every=0.5)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _start(cluster: Cluster, name: str, *arguments: str) -> subprocess.Popen:
    """A daemon in the foreground (so its PID is the one to stop), its output in ``<name>.log``."""
    with open(cluster.folder / f"{name}.log", "wb") as log:
        process = subprocess.Popen([name, *arguments], env=cluster.env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.2)
    if process.poll() is not None:
        raise AssertionError(f"{name} stopped at once ({process.returncode})\n" + cluster.logs())
    return process


def task_process(task: str) -> int | None:
    """The PID of the Python process running SLURM task ``task`` (array task ``12_0``, or job ``12``):
    submitit's ``_submit`` with the task's ids in its environment (not the ``srun`` that started it)."""
    job, _, index = task.partition("_")
    wanted = {f"SLURM_ARRAY_JOB_ID={job}".encode(), f"SLURM_ARRAY_TASK_ID={index}".encode()} if index else \
        {f"SLURM_JOB_ID={job}".encode()}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if Path(arguments[0].decode()).name.startswith("python") and b"submitit.core._submit" in arguments \
                    and wanted <= set((entry / "environ").read_bytes().split(b"\0")):
                return int(entry.name)
        except OSError:
            continue
    return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (or is stopped), not gone nor a zombie."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


# Two grid points, small enough for a CPU test, long enough (12 member-epochs each) that a task
# interrupted after its first epoch checkpoint is interrupted in the middle of its training.
TWO = """
name = "two"
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [3, 4]
epochs = 6
batch_size = 32
keep = "last"
[grid]
method = ["sgd", "sam"]
rho = [0.05]
[measure.evaluate]
corruptions = "none"
"""
# The same SGD grid point alone (same run folder name, same ensemble).
ONE = TWO.replace('method = ["sgd", "sam"]', 'method = ["sgd"]')
