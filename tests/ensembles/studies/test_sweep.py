"""Sweeps: planning, bad files and values, folders that stay inside --out, skip-if-stored jobs,
interruption and resumption, submitit executors, and numbers that do not depend on the number of
jobs."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import submitit
import torch
from click.testing import CliRunner

import cli
from ensembles.runs import run_folder
from ensembles.studies import evaluation, measurements, quickstart, sweep
from ensembles.studies.sweep import read_sweep
from ensembles.training import trainer
from ensembles.training.trainer import TrainingSettings
from landscape.errors import InputError

from tiny_runs import one_error_line

ROOT = Path(__file__).resolve().parents[3]

PLAN = """
name = "plan"
[base]
dataset = "digits"
model = "small_cnn"
epochs = 4
td = 2
[grid]
method = ["sgd", "sam", "sharpbalance"]
rho = [0.05, 0.2]
width = [8, 16]
reference_compatible = [false, true]
seeds = [[13, 17], [113, 117]]
"""


def test_plan_expands_the_grid_to_exactly_the_expected_jobs():
    plan = sweep.parse_sweep(PLAN)
    # Written out by hand: SGD ignores rho and the SharpBalance switch, SAM ignores the switch.
    expected = []
    for width in (8, 16):
        for seeds in ("13.17", "113.117"):
            expected.append(f"sgd-w{width}-s{seeds}")
    for rho in ("0.05", "0.2"):
        for width in (8, 16):
            for seeds in ("13.17", "113.117"):
                expected.append(f"sam-rho{rho}-w{width}-s{seeds}")
    for rho in ("0.05", "0.2"):
        for width in (8, 16):
            for variant in ("paper", "ref"):
                for seeds in ("13.17", "113.117"):
                    expected.append(f"sharpbalance-rho{rho}-w{width}-{variant}-s{seeds}")
    assert sorted(job.name for job in plan.jobs) == sorted(expected)
    assert len(plan.jobs) == 4 + 8 + 16
    by_name = {job.name: job.settings for job in plan.jobs}
    chosen = by_name["sharpbalance-rho0.2-w16-ref-s113.117"]
    assert (chosen.method, chosen.rho, chosen.width, chosen.reference_compatible, chosen.seeds, chosen.epochs,
            chosen.td) == ("sharpbalance", 0.2, 16, True, (113, 117), 4, 2)
    assert by_name["sgd-w8-s13.17"].method == "sgd"
    table = sweep.plan_table(plan)
    assert list(table.columns) == ["run", "method", "rho", "width", "reference_compatible", "seeds", "members",
                                   "epochs"]
    assert table.set_index("run").loc["sgd-w8-s13.17", "rho"] == "-"
    assert plan.group_by == ("method",)


ETA_GRID = """
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [13, 17]
epochs = 1
batch_size = 32
train_samples = 64
[grid]
method = ["sgd", "sam", "asam"]
rho = [0.1]
eta = [0.01, 0.1]
"""


def test_a_grid_setting_eta_drops_it_outside_asam_and_the_jobs_train(tmp_path):
    plan = sweep.parse_sweep(ETA_GRID)
    # By hand: sgd ignores rho and eta, sam ignores eta, asam uses both: 1 + 1 + 2 jobs.
    assert [job.name for job in plan.jobs] == ["sgd-s13.17", "sam-rho0.1-s13.17", "asam-rho0.1-eta0.01-s13.17",
                                               "asam-rho0.1-eta0.1-s13.17"]
    assert [(job.settings.rho, job.settings.eta) for job in plan.jobs] == [(0.0, None), (0.1, None), (0.1, 0.01),
                                                                          (0.1, 0.1)]
    assert list(sweep.plan_table(plan)["eta"]) == ["-", "-", "0.01", "0.1"]
    # eta in [base] is dropped the same way
    based = sweep.parse_sweep(ETA_GRID.replace("eta = [0.01, 0.1]", "").replace("[grid]", "eta = 0.05\n[grid]"))
    assert [(job.name, job.settings.eta) for job in based.jobs] == [
        ("sgd-s13.17", None), ("sam-rho0.1-s13.17", None), ("asam-rho0.1-s13.17", 0.05)]
    # the SGD and SAM jobs train, and their run.json holds no eta
    for job in plan.jobs[:2]:
        outcome = sweep.run_job(job, tmp_path, device="cpu")
        assert [(step.name, step.action) for step in outcome.steps] == [("train", "trained")]
        config = run_folder.read_config(tmp_path / job.name)
        assert config["eta"] is None and config["method"] == job.settings.method
        assert run_folder.finished_members(config) == [0, 1]


def test_plan_command_prints_every_job():
    result = CliRunner().invoke(cli.main, ["sweep", "plan", str(ROOT / "examples" / "digits-grid.toml")])
    assert result.exit_code == 0, result.output
    plan = sweep.read_sweep(ROOT / "examples" / "digits-grid.toml")
    for job in plan.jobs:
        assert job.name in result.output
    assert f"{len(plan.jobs)} jobs" in result.output


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_examples_parse(example):
    plan = sweep.read_sweep(example)
    assert plan.jobs and len({job.name for job in plan.jobs}) == len(plan.jobs)


def _error(text):
    with pytest.raises(InputError) as caught:
        sweep.parse_sweep(text, source="bad.toml")
    return str(caught.value)


def test_bad_sweep_files_name_the_key_and_line():
    base = '[base]\ndataset = "digits"\nmodel = "small_cnn"\n'
    message = _error(base + "[grid]\nrhoo = [0.1]\n")
    assert "rhoo" in message and "line 5" in message and "unknown axis" in message
    message = _error(base + "[grid]\nrho = []\n")
    assert "[grid] rho (line 5)" in message and "empty" in message
    message = _error('[base]\ndataset = "digits"\nmodel = "small_cnn"\nrho = 0.1\n[grid]\nrho = [0.1, 0.2]\n')
    assert "rho" in message and "line 4" in message and "line 6" in message and "conflict" in message
    message = _error(base + "[grid]\nrho = [0.1, 0.1]\n")
    assert "twice" in message and "line 5" in message
    message = _error(base + "[grid]\nrho = 0.1\n")
    assert "list" in message and "line 5" in message
    message = _error(base + "[grid]\nrho = 0.1 0.2\n")  # TOML syntax: tomllib's own line
    assert "not valid TOML" in message and "line 5" in message
    message = _error(base + "[measure.hessian]\nprobes = 3\n")
    assert "probes" in message and "line 5" in message and "n_probes" in message
    message = _error(base + "[measure.curvature]\n")
    assert "curvature" in message
    message = _error(base + "[grid]\nseeds = [13, 17]\n")
    assert "seed lists" in message
    message = _error('[base]\ndataset = "digits"\nmodel = "small_cnn"\nepochs = 2\ntd = 5\n'
                     '[grid]\nmethod = ["sharpbalance"]\n')
    assert "method=sharpbalance" in message and "td" in message
    assert "model" in _error('[base]\ndataset = "digits"\n')
    assert "frobnicate" in _error(base + "frobnicate = 1\n")


def test_time_limits_and_slurm_script(tmp_path, monkeypatch):
    assert sweep.timeout_minutes("24:00:00") == 24 * 60
    assert sweep.timeout_minutes("1-02:30:00") == 26 * 60 + 30
    assert sweep.timeout_minutes("90") == 90
    assert sweep.timeout_minutes("10:30") == 11  # MM:SS, rounded up
    with pytest.raises(InputError, match="--time"):
        sweep.timeout_minutes("soon")
    request = sweep.ClusterRequest(partition="gpu", gpus_per_job=1, time="24:00:00", cpus_per_job=8, mem_gb=32,
                                   setup=("source .venv/bin/activate",))
    # submitit's SLURM executor only needs to find srun; render the sbatch script it would submit.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(folder=tmp_path / "logs", cluster="slurm")
    executor.update_parameters(**sweep.slurm_parameters(request, "width", jobs=4))
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=1440",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --job-name=sharpdiv-width",
                 "#SBATCH --signal=USR2@120", "source .venv/bin/activate"):
        assert line in script


PREEMPTED = """
name = "preempted"
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [13, 17]
epochs = 2
batch_size = 64
train_samples = 192
keep = "last"  # the weights of the last epoch: this is about the requeue, not about choosing the best
[grid]
method = ["sgd"]
"""

# The job as submitit runs it: unpickled in its own process. It pauses after member 0's first
# epoch checkpoint so the test can kill it at a known point; the pause is its only difference.
PREEMPTED_SCRIPT = textwrap.dedent("""
    import pickle, signal, sys
    from ensembles.training import trainer

    def pause_after_the_first_epoch(event):
        if event["event"] == "epoch":
            signal.pause()

    real = trainer.train
    trainer.train = lambda *args, **kwargs: real(*args, **kwargs, callback=pause_after_the_first_epoch)
    with open(sys.argv[1], "rb") as stream:
        job = pickle.load(stream)
    job()
""")


def _weights(path: Path) -> dict:
    states = {f"train/{f.name}": torch.load(f, weights_only=True)["model"] for f in sorted((path / "train").glob("*.pt"))}
    members = {f.name: safetensors.torch.load_file(str(f)) for f in sorted(path.glob("member-*.safetensors"))}
    return {**states, **members}


def test_preempted_job_killed_for_real_is_requeued_and_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a sweep job in its own process after its first epoch checkpoint; the requeued job
    (submitit's checkpoint(): the same job again) resumes from the run folder and ends bit for bit
    where an uninterrupted job ends."""
    plan = sweep.parse_sweep(PREEMPTED)
    (spec,) = plan.jobs
    job = sweep.SweepJob(spec, tmp_path / "killed", plan.measurements, device="cpu", threads=1)
    pickled = tmp_path / "job.pkl"
    pickled.write_bytes(pickle.dumps(job))
    run = tmp_path / "killed" / spec.name
    checkpoint = run / "train" / "member-0.pt"
    errors = tmp_path / "stderr.txt"
    with open(errors, "wb") as stream:  # a file, not a pipe: a full pipe would stall the job
        process = subprocess.Popen([sys.executable, "-c", PREEMPTED_SCRIPT, str(pickled)], cwd=ROOT, stderr=stream)
    while not checkpoint.is_file():
        assert process.poll() is None, errors.read_text()[-2000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert not list(run.glob("member-*.safetensors")) and run_folder.finished_members(run_folder.read_config(run)) == []

    requeued = job.checkpoint()
    assert isinstance(requeued, submitit.helpers.DelayedSubmission)
    outcome = requeued.function(*requeued.args, **requeued.kwargs)
    assert [(step.name, step.action) for step in outcome.steps] == [("train", "resumed")]
    assert run_folder.finished_members(run_folder.read_config(run)) == [0, 1]

    uninterrupted = sweep.SweepJob(spec, tmp_path / "whole", plan.measurements, device="cpu", threads=1)()
    assert [(step.name, step.action) for step in uninterrupted.steps] == [("train", "trained")]
    resumed, reference = _weights(run), _weights(tmp_path / "whole" / spec.name)
    assert sorted(resumed) == sorted(reference) == [
        "member-0.safetensors", "member-1.safetensors", "train/member-0.pt", "train/member-1.pt"]
    for name in reference:
        assert resumed[name].keys() == reference[name].keys(), name
        for key in reference[name]:
            assert torch.equal(resumed[name][key], reference[name][key]), (name, key)
    log, whole_log = trainer.read_training_log(run), trainer.read_training_log(tmp_path / "whole" / spec.name)
    assert log.drop(columns="seconds").equals(whole_log.drop(columns="seconds"))


TINY = """
name = "tiny"
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [13, 17]
epochs = 2
batch_size = 128
[grid]
method = ["sgd", "sam"]
rho = [0.05]
[[measure.sharpness]]
rho = [0.5]
n_batches = 2
n_iters = 2
[measure.evaluate]
corruptions = "none"
[measure.connectivity]
n_examples = 64
alphas = 3
bn_examples = 64
[report]
group_by = ["method", "width"]
"""


class _Counter:
    """Wraps a module function and counts (and optionally sabotages) its calls."""

    def __init__(self, monkeypatch, module, name, sabotage=None):
        self.real, self.calls, self.sabotage = getattr(module, name), [], sabotage
        monkeypatch.setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        self.calls.append(args)
        if self.sabotage is not None:
            args, kwargs = self.sabotage(len(self.calls), args, kwargs)
        return self.real(*args, **kwargs)


def _killed_mid_training(name):
    """Sabotage: the training of run ``name`` is killed after its first member's first epoch."""

    def sabotage(count, args, kwargs):
        if Path(args[0]).name == name:
            def kill(event):
                if event["event"] == "epoch":
                    raise KeyboardInterrupt
            kwargs = {**kwargs, "callback": kill}
        return args, kwargs

    return sabotage


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sweep")


def test_sweep_runs_is_killed_and_rerun_doing_only_the_missing_work(tiny_root, monkeypatch):
    plan = sweep.parse_sweep(TINY)
    assert [job.name for job in plan.jobs] == ["sgd-s13.17", "sam-rho0.05-s13.17"]

    # First run: the SAM job is killed during its training, after the SGD job finished.
    first = _Counter(monkeypatch, trainer, "train", _killed_mid_training("sam-rho0.05-s13.17"))
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(plan, tiny_root, executor="local", jobs=1, device="cpu")
    assert [Path(args[0]).name for args in first.calls] == ["sgd-s13.17", "sam-rho0.05-s13.17"]
    assert run_folder.finished_members(run_folder.read_config(tiny_root / "sam-rho0.05-s13.17")) == []
    assert (tiny_root / "sam-rho0.05-s13.17" / "train" / "member-0.pt").is_file()
    monkeypatch.undo()

    # Second run: nothing is trained from scratch; the SAM job resumes; the SGD job only reads.
    trained = _Counter(monkeypatch, trainer, "train")
    resumed = _Counter(monkeypatch, trainer, "resume")
    result = sweep.run_sweep(plan, tiny_root, executor="local", jobs=1, device="cpu")
    assert trained.calls == [] and [Path(args[0]).name for args in resumed.calls] == ["sam-rho0.05-s13.17"]
    assert not result.failures
    sgd, sam = result.outcomes
    assert [(s.name, s.action, s.computed) for s in sgd.steps] == [
        ("train", "kept", 0), ("sharpness", "reused", 0), ("evaluate", "reused", 0), ("connectivity", "reused", 0)]
    assert [(s.name, s.action) for s in sam.steps] == [
        ("train", "resumed"), ("sharpness", "measured"), ("evaluate", "measured"), ("connectivity", "measured")]
    config = run_folder.read_config(tiny_root / "sam-rho0.05-s13.17")
    assert run_folder.finished_members(config) == [0, 1] and config["rho"] == 0.05
    assert trainer.read_training_log(tiny_root / "sam-rho0.05-s13.17")["epoch"].max() == 2

    # Third run: everything is stored.
    again = sweep.run_sweep(plan, tiny_root, executor="local", jobs=1, device="cpu")
    assert trained.calls == [] and len(resumed.calls) == 1
    assert all(step.computed == 0 for outcome in again.outcomes for step in outcome.steps)

    # The sweep log holds what happened, in order.
    log = [(r["job"], r["step"], r["action"]) for r in sweep.read_log(tiny_root) if r["step"] == "train"]
    assert log == [("sgd-s13.17", "train", "trained"), ("sgd-s13.17", "train", "kept"),
                   ("sam-rho0.05-s13.17", "train", "resumed"), ("sgd-s13.17", "train", "kept"),
                   ("sam-rho0.05-s13.17", "train", "kept")]
    status = sweep.sweep_status(plan, tiny_root).set_index("run")
    assert list(status["training"]) == ["done", "done"]


def test_a_folder_holding_another_ensemble_is_refused(tiny_root):
    changed = sweep.parse_sweep(TINY.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(InputError, match="another ensemble.*epochs 2 there vs 3 here"):
        sweep.run_sweep(changed, tiny_root, executor="local", device="cpu")


def test_debug_executor_reruns_a_job_that_failed_once(tiny_root, monkeypatch):
    """submitit's in-process executor: the Hessian step fails once; the retry does only that step."""
    text = TINY.replace("[report]", "[measure.hessian]\nn_examples = 32\nn_probes = 2\n[report]")
    plan = sweep.parse_sweep(text)

    def fail_once(count, args, kwargs):
        if count == 1:
            raise RuntimeError("node lost")
        return args, kwargs

    flaky = _Counter(monkeypatch, measurements, "measure_hessian", fail_once)
    trained = _Counter(monkeypatch, trainer, "train")
    evaluated = _Counter(monkeypatch, evaluation, "evaluate_runs")
    messages = []
    result = sweep.run_sweep(plan, tiny_root, executor="debug", retries=1, device="cpu", echo=messages.append)
    assert not result.failures and len(result.outcomes) == 2
    assert len(flaky.calls) == 3  # the SGD job failed once and ran again; the SAM job ran once
    assert any("sgd-s13.17: failed: RuntimeError: node lost" in m for m in messages)
    assert trained.calls == []
    assert len(evaluated.calls) == 2 and all(
        step.computed == 0 for outcome in result.outcomes for step in outcome.steps if step.name != "hessian")
    hessian = [(r["job"], r["action"]) for r in sweep.read_log(tiny_root) if r["step"] == "hessian"]
    assert sorted(hessian) == [("sam-rho0.05-s13.17", "measured"), ("sgd-s13.17", "measured")]
    assert set(result.job_ids) == {"sgd-s13.17", "sam-rho0.05-s13.17"}

    # Without retries the failure is reported, not raised, and the other job still runs.
    monkeypatch.setattr(measurements, "measure_hessian", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    result = sweep.run_sweep(plan, tiny_root, executor="debug", retries=0, device="cpu")
    assert set(result.failures) == {"sgd-s13.17", "sam-rho0.05-s13.17"} and result.outcomes == ()


def test_local_processes_run_the_jobs_through_submitit(tiny_root):
    """Two submitit local processes at once; every step is already stored, so each only checks."""
    plan = sweep.parse_sweep(TINY)
    result = sweep.run_sweep(plan, tiny_root, executor="local", jobs=2, device="cpu", poll_seconds=0.5)
    assert not result.failures and [o.job for o in result.outcomes] == [j.name for j in plan.jobs]
    assert all(step.computed == 0 for outcome in result.outcomes for step in outcome.steps)
    pids = {r["pid"] for r in sweep.read_log(tiny_root)[-8:]}
    assert os.getpid() not in pids and len(pids) == 2  # each job in its own process


def test_sweep_status_takes_the_root_as_report_does_and_still_accepts_out(tiny_root, tmp_path):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    shown = {}
    for spelling in ("--root", "--out"):
        result = CliRunner().invoke(cli.main, ["sweep", "status", str(file), spelling, str(tiny_root)])
        assert result.exit_code == 0, result.output
        shown[spelling] = result.output
    assert shown["--root"] == shown["--out"]
    rows = [line.split() for line in shown["--root"].splitlines()]
    assert rows[0] == ["run", "training", "sharpness", "evaluate", "connectivity"]
    assert [row[:2] for row in rows[1:]] == [["sgd-s13.17", "done"], ["sam-rho0.05-s13.17", "done"]]
    missing = CliRunner().invoke(cli.main, ["sweep", "status", str(file)])
    assert missing.exit_code == 2 and "--root" in missing.output


def test_sweep_run_without_waiting_prints_a_status_command_that_works(tiny_root, tmp_path, monkeypatch):
    import shlex

    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    submitted = sweep.SweepResult(outcomes=(), failures={}, job_ids={"sgd-s13.17": "7_0", "sam-rho0.05-s13.17": "7_1"},
                                  waited=False)
    monkeypatch.setattr(sweep, "run_sweep", lambda *args, **kwargs: submitted)  # no cluster here
    result = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(tiny_root), "--executor", "slurm",
                                           "--no-wait"])
    assert result.exit_code == 0, result.output
    hint = result.stdout.strip().splitlines()[-1]
    assert hint == f"submitted 2 jobs; follow them with: sharpdiv sweep status {file} --root {tiny_root}"
    command = shlex.split(hint.split("follow them with: ")[1])
    assert command[0] == "sharpdiv"
    status = CliRunner().invoke(cli.main, command[1:])
    assert status.exit_code == 0 and "sam-rho0.05-s13.17" in status.output, status.output


def test_sweep_report_groups_by_the_swept_axes(tiny_root, tmp_path):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY)
    result = CliRunner().invoke(cli.main, ["sweep", "report", str(file), "--root", str(tiny_root),
                                           "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "2 of 2 runs reported" in result.output
    assert run_folder.read_config(tiny_root / "sam-rho0.05-s13.17")["sweep_group"] == "method=sam width=4"
    summary = (tmp_path / "report" / "tables" / "summary.csv").read_text()
    assert "method=sam width=4" in summary and "method=sgd width=4" in summary
    assert (tmp_path / "report" / "index.html").is_file()


def test_sweep_files_accept_the_ascent(tmp_path):
    sweep_file = tmp_path / "s.toml"
    sweep_file.write_text('[base]\ndataset = "digits"\nmodel = "small_cnn"\n[grid]\nmethod = ["sgd"]\n'
                          '[[measure.sharpness]]\nrho = [0.5]\nascent = "reference"\n')
    sweep = read_sweep(sweep_file)
    assert [dict(m.options) for m in sweep.measurements] == [{"rhos": (0.5,), "ascent": "reference"}]


def test_a_sweep_never_reuses_a_folder_trained_with_another_input_stage(tmp_path):
    """A sweep that asks for small_cnn as the zoo has it (the data pipeline normalises) must not
    count a folder whose members normalise [0, 1] inputs themselves (--mean/--std) as its own:
    the keys the sweep left out are not 'anything goes', they resolve to the library's default."""
    from click.testing import CliRunner

    import cli
    from ensembles.studies import sweep
    from ensembles.training.trainer import TrainingSettings
    from landscape.errors import InputError

    run = tmp_path / "run"
    result = CliRunner().invoke(cli.main, [str(a) for a in (
        "train", "--data", "digits", "--model", "small_cnn", "--width", 4, "--mean", "0.5,0.5,0.5",
        "--std", "0.25,0.25,0.25", "--out", run, "--epochs", 1, "--seeds", 1, "--train-samples", 16,
        "--batch-size", 8, "--device", "cpu")])
    assert result.exit_code == 0, result.output
    asked = dict(dataset="digits", model="small_cnn", width=4, method="sgd", seeds=(1,), epochs=1,
                 train_samples=16, batch_size=8)
    same = TrainingSettings(**asked, model_input={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert sweep._training_state(run, same) == "done"
    with pytest.raises(InputError, match="model_input"):
        sweep._training_state(run, TrainingSettings(**asked))


# A sweep small enough to train in a second, should anything reach training.
TINY_BASE = """
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [13]
epochs = 1
batch_size = 64
train_samples = 64
"""


# ----------------------------------------------------------------------------------------------
# a sweep file cannot write outside --out; string values in sweep axes


@pytest.mark.parametrize("axis, value", [
    ("prune_epoch", '"../../../ESCAPED"'), ("width", '"../x"'), ("epochs", '"2"'), ("rho", '"0.1"'),
    ("lr", '"fast"'), ("batch_size", "true"), ("rho", "inf"), ("rho", "-0.1"), ("weight_decay", "nan"),
    ("method", '"../sgd"'), ("model", '"../../resnet18"'), ("schedule", '"linear"'), ("keep", '"weird"'),
    ("sparsity", "1.5"), ("train_samples", "0"), ("prune_epoch", "-1"), ("reference_compatible", '"yes"'),
    ("seeds", '["13"]'), ("seeds", "[-1]"), ("seeds", "[9223372036854775808]"),
])
def test_plan_refuses_each_value_of_the_wrong_type_naming_axis_and_value(axis, value):
    base = '[base]\ndataset = "digits"\n' + ('model = "small_cnn"\n' if axis != "model" else 'epochs = 2\n')
    text = base + f"[grid]\n{axis} = [{value}]\n"
    with pytest.raises(InputError) as caught:
        sweep.parse_sweep(text, source="bad.toml")
    message = str(caught.value)
    shown = value.replace('"', "'")  # strings are quoted, so "2" is told apart from 2
    assert message.startswith(f"bad.toml: [grid] {axis} (line 5): {shown} is not a valid {axis}; it must be ")
    assert "\n" not in message


def test_base_settings_are_checked_like_axes():
    with pytest.raises(InputError, match=r"\[base\] width \(line 4\): '\.\./x' is not a valid width"):
        sweep.parse_sweep('[base]\ndataset = "digits"\nmodel = "small_cnn"\nwidth = "../x"\n', source="bad.toml")


def test_sweep_plan_and_run_refuse_a_path_in_an_axis_and_write_nothing(tmp_path):
    file = tmp_path / "escape.toml"
    file.write_text(TINY_BASE + '[grid]\nprune_epoch = ["../../../ESCAPED", 0]\n')
    out = tmp_path / "a" / "b" / "out"
    planned = CliRunner().invoke(cli.main, ["sweep", "plan", str(file)])
    line = one_error_line(planned)
    assert "prune_epoch" in line and "'../../../ESCAPED'" in line and "integer >= 0" in line
    ran = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(out), "--device", "cpu"])
    assert one_error_line(ran) == line  # plan refuses exactly what run refuses
    assert not list(tmp_path.rglob("*ESCAPED*")) and not (tmp_path / "a").exists()


def _tiny_job(name):
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, seeds=(13,), epochs=1, batch_size=64,
                                train_samples=64)
    return sweep.Job(name=name, settings=settings)


def test_a_job_whose_folder_resolves_outside_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "linked").symlink_to(outside, target_is_directory=True)
    for name in ("../escaped", "linked", "..", "a/b"):
        with pytest.raises(InputError, match="would lie outside the sweep root"):
            sweep.run_job(_tiny_job(name), root)
    plan = sweep.Sweep(name="s", base={}, grid={}, jobs=(_tiny_job("../escaped"),), measurements=(), report={})
    with pytest.raises(InputError, match="would lie outside the sweep root"):
        sweep.run_sweep(plan, root / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside", "root"]
    assert not any(outside.iterdir()) and [p.name for p in root.iterdir()] == ["linked"]


def test_folder_names_are_built_from_validated_values_only():
    text = TINY_BASE.replace('dataset = "digits"\n', "") + \
        '[grid]\ndataset = ["digits", "folder:../../x y"]\nlr = [0.1, 1e-05]\n'
    names = [job.name for job in sweep.parse_sweep(text).jobs]
    assert names == ["sgd-digits-lr0.1-s13", "sgd-digits-lr1e-05-s13", "sgd-folder_x_y-lr0.1-s13",
                     "sgd-folder_x_y-lr1e-05-s13"]
    for name in names:
        assert "/" not in name and ".." not in name


def test_a_sweep_sets_and_names_the_augmentation():
    text = """
name = "aug"
[base]
dataset = "digits"
model = "small_cnn"
seeds = [1, 2]
epochs = 2
[grid]
augmentation = ["none", "crop-flip"]
"""
    plan = sweep.parse_sweep(text)
    assert [job.name for job in plan.jobs] == ["sgd-none-s1.2", "sgd-crop_flip-s1.2"]
    assert [job.settings.augmentation for job in plan.jobs] == ["none", "crop-flip"]
    with pytest.raises(InputError, match="not a valid augmentation"):
        sweep.parse_sweep(text.replace('"crop-flip"]', '"mirror"]'))
    assert all(job.settings.augmentation == "none" for job in quickstart.quickstart_sweep().jobs)


TWO_METHOD_SWEEP = """
name = "same"
[base]
dataset = "digits"
model = "small_cnn"
width = 2
seeds = [3, 4]
epochs = 1
batch_size = 32
train_samples = 64
[grid]
method = ["sgd", "sam"]
rho = [0.05]
[[measure.sharpness]]
rho = [0.5]
m = 4
n_batches = 2
n_iters = 2
[measure.evaluate]
corruptions = "none"
"""


def _numbers(root, plan):
    found = {}
    for job in plan.jobs:
        path = root / job.name
        table = run_folder.read_results(path, current_only=True)
        table = table.sort_values("key")  # a row's key names its metric, slice, settings, weights and data
        found[job.name] = ([path.joinpath(f"member-{i}.safetensors").read_bytes() for i in (0, 1)],
                           (table["key"].tolist(), table["value"].to_numpy()))
    return found


def test_the_numbers_do_not_depend_on_the_number_of_jobs(tmp_path):
    """One thread each: two jobs in two processes give the weights and results of one job at a time."""
    plan = sweep.parse_sweep(TWO_METHOD_SWEEP)
    outside = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep.run_sweep(plan, tmp_path / "serial", executor="local", jobs=1, device="cpu")
    finally:
        torch.set_num_threads(outside)
    result = sweep.run_sweep(plan, tmp_path / "parallel", executor="local", jobs=2, threads=1, device="cpu",
                             poll_seconds=0.2)
    assert not result.failures
    serial, parallel = _numbers(tmp_path / "serial", plan), _numbers(tmp_path / "parallel", plan)
    for name in serial:
        assert serial[name][0] == parallel[name][0], name
        assert serial[name][1][0] == parallel[name][1][0] and len(serial[name][1][0]) > 0
        np.testing.assert_array_equal(serial[name][1][1], parallel[name][1][1])


def test_sweep_accepts_library_models_and_model_args(tmp_path):
    from ensembles.studies.sweep import read_sweep

    file = tmp_path / "s.toml"
    file.write_text('[base]\ndataset = "digits"\nmodel = "torchvision:resnet18"\nepochs = 1\n'
                    '[base.model_args]\nzero_init_residual = true\n[grid]\nmethod = ["sgd"]\n')
    sweep = read_sweep(file)
    assert sweep.jobs[0].settings.model_args == {"zero_init_residual": True}
    file.write_text('[base]\ndataset = "digits"\nmodel = "../evil:x"\n')
    with pytest.raises(InputError, match="not a valid model"):
        read_sweep(file)


def test_sweep_run_refuses_a_users_report_folder_before_training(tmp_path):
    file = tmp_path / "tiny.toml"
    file.write_text(TINY_BASE + '[grid]\nmethod = ["sgd"]\n')
    out = tmp_path / "root"
    (out / "report").mkdir(parents=True)
    (out / "report" / "README.md").write_text("mine\n")
    result = CliRunner().invoke(cli.main, ["sweep", "run", str(file), "--out", str(out), "--device", "cpu"])
    line = one_error_line(result)
    assert str(out / "report") in line and "--force" in line
    assert sorted(p.name for p in out.rglob("*")) == ["README.md", "report"]  # nothing trained
