"""What was written before the training settings were declared in one place still works exactly:
sweep run folders keep their names byte for byte (a new name would orphan the folder and train it
again), stored run.json and train/settings.json read back into the same settings and are kept by
the sweep, an interrupted run resumes, and command lines parse into the same settings.

The files in ``stored_before_declared_settings/`` were written by the code before that change:
``sweep_folder_names.json`` (sweep files and the run folder names they gave), ``sweep_run_files.json``
(run.json and train/settings.json of a sweep trained then), ``train_command_lines.json`` (command
lines and the settings ``sharpdiv train`` built from them) and ``interrupted_sam_run/`` (a run
stopped in its second member, both members' training state on disk).
"""
import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from ensembles.runs.run_folder import read_config
from ensembles.studies import sweep
from ensembles.training import trainer

STORED = Path(__file__).resolve().parent / "stored_before_declared_settings"


def _stored(name: str):
    return json.loads((STORED / name).read_text())


#: Jobs the code of then lost: it left model_input out of a job's identity, so grid points that differ
#: only in it were merged into the first. They are jobs of their own now; the stored names stay.
MERGED_THEN = {"model-tables": [
    "sgd-model_argsnone-model_input_size_28_mean_0.5_0.5_0.5_std_0.25_0.25_0.25_-s13.17.27",
    "sgd-model_args_depth_2_-model_input_size_28_mean_0.5_0.5_0.5_std_0.25_0.25_0.25_-s13.17.27",
    "sgd-model_args_hidden_64_act_relu_-model_input_size_28_mean_0.5_0.5_0.5_std_0.25_0.25_0.25_-s13.17.27"]}


@pytest.mark.parametrize("grid", sorted(_stored("sweep_folder_names.json")))
def test_sweep_run_folder_names_are_byte_identical_to_the_stored_ones(grid):
    stored = _stored("sweep_folder_names.json")[grid]
    plan = sweep.parse_sweep(stored["sweep"], source=f"{grid}.toml")
    names = [job.name for job in plan.jobs]
    assert [name for name in names if name not in MERGED_THEN.get(grid, [])] == stored["runs"]
    assert sorted(set(names) - set(stored["runs"])) == sorted(MERGED_THEN.get(grid, []))


def _write_stored_runs(root: Path) -> dict:
    stored = _stored("sweep_run_files.json")
    for name, files in stored["runs"].items():
        for relative, content in files.items():
            (root / name / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / name / relative).write_text(json.dumps(content))
        (root / name / ".sharpdiv").write_text(json.dumps({"made_by": "sharpdiv", "kind": "run"}))
    return stored


def assert_as_stored(now: dict, stored: dict) -> None:
    """``now`` (settings as a JSON record) holds every stored setting unchanged, and each setting
    added since the record was written at its default, which leaves it off."""
    assert {name: now.get(name) for name in stored} == stored
    defaults = {field.name: field.default for field in fields(trainer.TrainingSettings)}
    added = {name: value for name, value in now.items() if name not in stored}
    assert added == {name: defaults[name] for name in added}


def test_the_run_folders_of_a_stored_sweep_are_kept_and_read_back_as_the_same_settings(tmp_path):
    stored = _write_stored_runs(tmp_path)
    plan = sweep.parse_sweep(stored["sweep"], source="stored.toml")
    assert sorted(job.name for job in plan.jobs) == sorted(stored["runs"])
    for job in plan.jobs:
        folder = tmp_path / job.name
        assert sweep._training_state(folder, job.settings) == "done", job.name  # kept, not trained again
        assert trainer.settings_of_run(folder) == job.settings
        # the gate `train --resume` passes through: the stored train/settings.json is these settings
        trainer._require_own_training_state(folder, trainer.settings_of_run(folder), recorded=True)
        assert_as_stored(trainer._settings_record(job.settings), stored["runs"][job.name]["train/settings.json"])


def test_a_stored_sweep_run_of_other_settings_is_still_refused(tmp_path):
    stored = _write_stored_runs(tmp_path)
    plan = sweep.parse_sweep(stored["sweep"].replace("epochs = 2", "epochs = 3"), source="stored.toml")
    with pytest.raises(sweep.InputError, match="holds another ensemble than the sweep asks for .*epochs 2 there vs 3"):
        sweep._training_state(tmp_path / plan.jobs[0].name, plan.jobs[0].settings)


def test_an_interrupted_run_from_before_resumes_to_the_end(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(STORED / "interrupted_sam_run", run)
    before = read_config(run)
    settings = trainer.settings_of_run(run)
    assert (settings.method, settings.rho, settings.seeds, settings.epochs) == ("sam", 0.1, (3, 4), 2)
    summaries = trainer.resume(run, note=lambda sentence: None)
    assert [(row.member, row.epochs) for row in summaries] == [(0, 2), (1, 2)]
    after = read_config(run)
    assert [member["status"] for member in after["members"]] == ["done", "done"]
    assert all((run / member["file"]).is_file() for member in after["members"])
    unchanged = {key: value for key, value in before.items() if key not in ("members",)}
    assert {key: after[key] for key in unchanged} == unchanged


@pytest.mark.parametrize("record", _stored("train_command_lines.json"), ids=lambda record: record["command"][15:60])
def test_train_command_lines_build_the_same_settings_as_before(record, monkeypatch):
    seen = []
    monkeypatch.setattr(trainer, "train", lambda out, settings, **options: seen.append(settings) or [])
    arguments = record["command"].split()[2:]
    result = CliRunner().invoke(cli.main, ["train"] + arguments)
    assert result.exit_code == 0, result.output
    assert_as_stored(json.loads(json.dumps(asdict(seen[0]))), record["settings"])
