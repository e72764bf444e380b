"""The sweep log records, for every step of a job, the CPU seconds (user + system) of the process that
ran it beside its wall seconds: on a shared machine a step's cost is its CPU time, and a sweep's budget
is extrapolated from it."""
import time
from types import SimpleNamespace

import pytest

from ensembles.studies import measurements, sweep
from ensembles.training import trainer

TINY = """
name = "tiny"
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [13]
epochs = 1
[measure.hessian]
n_examples = 32
n_probes = 1
"""


def _busy(seconds: float) -> None:
    start = time.process_time()
    while time.process_time() - start < seconds:
        pass


def test_each_step_logs_its_cpu_seconds_apart_from_its_wall_seconds(tmp_path, monkeypatch):
    """Training burns 0.3 s of CPU, the measurement sleeps 0.4 s: the log tells the two apart."""
    plan = sweep.parse_sweep(TINY)
    real_train = trainer.train

    def train(*args, **kwargs):
        _busy(0.3)
        return real_train(*args, **kwargs)

    def hessian(paths, **options):
        time.sleep(0.4)
        return [SimpleNamespace(computed=["trace"], reused=[])]

    monkeypatch.setattr(trainer, "train", train)
    monkeypatch.setattr(measurements, "measure_hessian", hessian)
    outcome = sweep.run_job(plan.jobs[0], tmp_path, plan.measurements, device="cpu")
    steps = {step.name: step for step in outcome.steps}
    assert steps["train"].cpu_seconds >= 0.3
    assert steps["hessian"].seconds >= 0.4 and steps["hessian"].cpu_seconds < 0.2
    logged = {row["step"]: row for row in sweep.read_log(tmp_path)}
    assert logged["train"]["cpu_seconds"] == pytest.approx(steps["train"].cpu_seconds, abs=1e-3)
    assert logged["hessian"]["cpu_seconds"] == pytest.approx(steps["hessian"].cpu_seconds, abs=1e-3)
    kept = sweep.run_job(plan.jobs[0], tmp_path, (), device="cpu")  # trained already: nothing spent
    assert [(step.name, step.action, step.cpu_seconds) for step in kept.steps] == [("train", "kept", 0.0)]
