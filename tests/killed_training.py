"""Train in a child process that kills itself (SIGKILL, as `kill -9`) right after a chosen member's
epoch checkpoint, and read a run's members and training states to compare them bit for bit, for the
resume-is-bit-identical tests. Test modules import it by name (``from killed_training import
train_until_killed``): pytest puts tests/ on the path."""
import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import safetensors.torch
import torch

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, torch
    torch.set_num_threads(1)
    from ensembles.training.trainer import TrainingSettings, train

    member, epoch = int(sys.argv[3]), int(sys.argv[4])

    def die(event):
        if event["event"] == "epoch" and (event["member"], event["epoch"]) == (member, epoch):
            os.kill(os.getpid(), signal.SIGKILL)

    train(sys.argv[1], TrainingSettings(**json.loads(sys.argv[2])), callback=die)
""")


def train_until_killed(run: Path, settings, member: int, epoch: int) -> None:
    """Train ``settings`` into ``run`` in a child process killed after ``member``'s epoch ``epoch``."""
    given = json.dumps(dataclasses.asdict(settings))
    finished = subprocess.run([sys.executable, "-c", _SCRIPT, str(run), given, str(member), str(epoch)], cwd=ROOT,
                              capture_output=True, timeout=600)
    assert finished.returncode == -signal.SIGKILL, finished.stderr.decode()[-2000:]


def member_weights(run: Path) -> list[dict]:
    files = sorted(run.glob("member-*.safetensors"))
    return [safetensors.torch.load_file(str(f)) for f in files]


def training_states(run: Path) -> list[dict]:
    return [torch.load(f, weights_only=True) for f in sorted((run / "train").glob("member-*.pt"))]


def assert_identical(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
