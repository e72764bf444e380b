"""A results-only copy of a run folder (no weights): reports read the same current rows from it;
other weights put into it later make those rows stale; nothing can be measured on it."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import results_fixtures as fixtures
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from ensembles.runs.files import file_digest
from landscape.errors import InputError
from reports.collect import collect, run_table


def _trained_run(path):
    run = fixtures.make_run(path, method="sam", rho=0.05)
    for index in range(3):
        torch.manual_seed(index)
        run_folder.save_member(run, index, build("mlp", 10, input_size=4, hidden=[2]), seed=13 + index)
    rows = fixtures.sharpness_rows([0.1, 0.2, 0.3]) + fixtures.evaluation_rows([0.8, 0.81, 0.82], {"accuracy": 0.85, "eir": 0.1})
    run_folder.append_results(run, rows)
    return run


def test_the_copy_holds_the_current_rows_without_weights_and_reports_read_them_alike(tmp_path):
    run = _trained_run(tmp_path / "runs" / "sam-rho0.05")
    copy = run_folder.write_results_only_copy(run, tmp_path / "copy" / "sam-rho0.05")
    assert not list(copy.glob("member-*")) and (copy / "run.json").is_file()
    config = run_folder.read_config(copy)
    assert config["results_only"] == {"from": "sam-rho0.05"}
    assert [member["digest"] for member in config["members"]] == \
        [file_digest(run_folder.member_path(run, i)) for i in range(3)]
    original, copied = run_folder.read_results(run, current_only=True), run_folder.read_results(copy, current_only=True)
    assert len(copied) == len(original) > 0
    pd.testing.assert_frame_equal(original.drop(columns="stale"), copied.drop(columns="stale"), check_dtype=False)
    # reports: the same settings and numbers, no trace of the copy in the run table's settings
    tables = [run_table([path]).drop(columns=["path"]) for path in (run, copy)]
    pd.testing.assert_frame_equal(*tables)
    assert collect([copy])["value"].sort_values().tolist() == collect([run])["value"].sort_values().tolist()


def test_a_copy_of_chosen_rows_keeps_only_those(tmp_path):
    run = _trained_run(tmp_path / "run")
    rows = run_folder.read_results(run, current_only=True)
    chosen = rows[rows["metric"] == "accuracy"]
    copy = run_folder.write_results_only_copy(run, tmp_path / "copy", chosen)
    assert set(run_folder.read_results(copy, current_only=True)["metric"]) == {"accuracy"}
    with pytest.raises(InputError, match="current rows"):
        run_folder.write_results_only_copy(run, tmp_path / "other", chosen.assign(key="made-up"))
    with pytest.raises(InputError, match="not empty"):
        run_folder.write_results_only_copy(run, tmp_path / "copy")


def test_other_weights_put_into_the_copy_make_its_rows_stale(tmp_path):
    run = _trained_run(tmp_path / "run")
    copy = run_folder.write_results_only_copy(run, tmp_path / "copy")
    torch.manual_seed(99)
    run_folder.save_member(copy, 1, build("mlp", 10, input_size=4, hidden=[2]))
    rows = run_folder.read_results(copy)
    assert rows.loc[rows["scope"] == "member-1", "stale"].all()
    assert rows.loc[rows["scope"] == "ensemble", "stale"].all()
    assert not rows.loc[rows["scope"] == "member-0", "stale"].any()


def test_a_folder_whose_weights_were_deleted_is_not_a_copy_its_rows_go_stale(tmp_path):
    # only run.json's results_only mark lets a recorded digest stand in for a missing file
    run = _trained_run(tmp_path / "run")
    config = json.loads((run / "run.json").read_text())
    for member in config["members"]:  # the right digests, but no results_only mark
        member["digest"] = file_digest(run_folder.member_path(run, member["index"]))
    (run / "run.json").write_text(json.dumps(config))
    run_folder.member_path(run, 0).unlink()
    rows = run_folder.read_results(run)
    assert rows.loc[rows["scope"] == "member-0", "stale"].all()


def test_nothing_can_be_measured_on_a_copy(tmp_path):
    copy = run_folder.write_results_only_copy(_trained_run(tmp_path / "run"), tmp_path / "copy")
    with pytest.raises(InputError, match="results-only copy of the run 'run'"):
        run_folder.load_run(copy)
