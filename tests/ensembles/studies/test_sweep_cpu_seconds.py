"""The sweep log's CPU seconds per step: what a study's cost on idle cores is estimated from."""
import time

from ensembles.studies import sweep
from ensembles.training import trainer

ONE_JOB = """
[base]
dataset = "digits"
model = "small_cnn"
width = 4
seeds = [13, 17]
epochs = 1
"""


def test_each_step_logs_the_cpu_seconds_of_its_process_apart_from_its_wall_seconds(tmp_path, monkeypatch):
    busy, asleep = 0.2, 0.3

    def train(path, settings, **kwargs):  # stands in for training: CPU work, then waiting
        start = time.process_time()
        while time.process_time() - start < busy:
            pass
        time.sleep(asleep)

    monkeypatch.setattr(trainer, "train", train)
    job = sweep.parse_sweep(ONE_JOB).jobs[0]
    outcome = sweep.run_job(job, tmp_path, device="cpu")
    (step,) = outcome.steps
    (record,) = sweep.read_log(tmp_path)
    assert record["cpu_seconds"] == round(step.cpu_seconds, 3)
    # the busy part counts, the sleep does not (wall seconds hold both)
    assert busy <= step.cpu_seconds < step.seconds - asleep + 0.05
    assert step.seconds >= busy + asleep
