"""`sharpdiv train --spawn-epoch`, `--connect-strength` and `--distill-from` end to end, and their
refusals as one line with exit status 2 before anything is written."""
import pytest
from click.testing import CliRunner

from cli import main
from ensembles.runs.run_folder import read_config

from tiny_runs import one_line_refusal

FLAGS = ["--data", "digits", "--model", "small_cnn", "--width", "4", "--epochs", "2", "--lr", "0.05",
         "--batch-size", "32", "--train-samples", "64", "--seeds", "3,5", "--keep", "last", "--threads", "1"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "teacher"
    result = CliRunner().invoke(main, ["train", *FLAGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_spawned_constrained_and_distilled_runs_from_the_command_line(teacher, tmp_path):
    runs = {"spawned": ["--spawn-epoch", "1"], "constrained": ["--connect-strength", "0.5"],
            "distilled": ["--distill-from", str(teacher), "--distill-temperature", "3", "--spawn-epoch", "1"]}
    for name, flags in runs.items():
        result = CliRunner().invoke(main, ["train", *FLAGS, *flags, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, (name, result.output)
        assert f"run folder: {tmp_path / name}" in result.output
    spawned, constrained, distilled = (read_config(tmp_path / name) for name in runs)
    assert spawned["spawn_epoch"] == 1 and spawned["parent"]["seed"] == 3 and spawned["parent"]["epoch"] == 1
    assert constrained["connect_strength"] == 0.5 and constrained["anchor"]["member"] == 0
    assert (distilled["distill_from"], distilled["distill_temperature"], distilled["distill_weight"],
            distilled["distill_target"]) == (str(teacher), 3.0, 0.5, "member")
    assert distilled["teacher"]["path"] == str(teacher.resolve())
    assert distilled["parent"]["digest"] == spawned["parent"]["digest"]  # the parent phase is plain training
    assert all(member["status"] == "done" for config in (spawned, constrained, distilled)
               for member in config["members"])


def test_the_single_basin_options_are_refused_in_one_line(teacher, tmp_path):
    out = tmp_path / "run"
    one_line_refusal(CliRunner().invoke(main, ["train", *FLAGS, "--distill-weight", "0.3", "--out", str(out)]),
                     "--distill-weight has no effect without --distill-from")
    one_line_refusal(CliRunner().invoke(main, ["train", *FLAGS, "--distill-from", str(tmp_path / "nowhere"),
                                               "--out", str(out)]),
                     "teacher run folder", "does not exist")
    one_line_refusal(CliRunner().invoke(main, ["train", *FLAGS, "--spawn-epoch", "2", "--out", str(out)]),
                     "spawn_epoch must lie in 0..1")
    one_line_refusal(CliRunner().invoke(main, ["train", *FLAGS, "--connect-strength", "1", "--distill-from",
                                               str(teacher), "--out", str(out)]),
                     "choose one")
    assert not out.exists()
