"""Where ``train --out`` cannot write, one line says why and what to do: an interrupted training
run is continued with ``--resume``, never pointed at removal; a path under a file is refused
before anything is made."""
import pytest

from ensembles.training.trainer import TrainingSettings, train
from tiny_runs import TINY_TRAINING, files_under, invoke, one_error_line, train_tiny


class Interrupted(Exception):
    pass


def stop_after_the_first_epoch(event):
    if event["event"] == "epoch":
        raise Interrupted


def test_an_interrupted_run_is_continued_with_resume(tmp_path):
    out = tmp_path / "run"
    settings = TrainingSettings(dataset="digits", model="small_cnn", width=4, epochs=2, seeds=(1,), train_samples=16,
                                batch_size=8)
    with pytest.raises(Interrupted):
        train(out, settings, device="cpu", callback=stop_after_the_first_epoch)
    before = files_under(out)
    line = one_error_line(invoke("train", *TINY_TRAINING, "--out", out))
    assert f"`sharpdiv train --resume {out}` continues it" in line and "interrupted" in line
    assert "remove" not in line
    assert files_under(out) == before
    resumed = invoke("train", "--resume", out, "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert "member 0 (seed 1): 2 epochs" in resumed.output


def test_a_finished_run_is_not_offered_for_resuming(tmp_path):
    out = train_tiny(tmp_path / "run")
    line = one_error_line(invoke("train", *TINY_TRAINING, "--out", out))
    assert "already holds a run" in line and "--resume" not in line


@pytest.mark.parametrize("below", ["sub", "sub/deeper"])
def test_an_out_folder_under_a_file_is_one_line(tmp_path, below):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    line = one_error_line(invoke("train", *TINY_TRAINING, "--out", afile / below))
    assert f"{afile} is a file, so --out {afile / below} cannot be made inside it" in line
    assert afile.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
