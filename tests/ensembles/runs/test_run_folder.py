"""Run folders round-trip bit-exactly; the results table keeps every writer's rows and finds stored
rows by their settings, keys grid rows by index, and new weights make old rows stale; a damaged
run.json, damaged or non-finite member weights and a bad results part are named in one line."""
import json
import math
import multiprocessing
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from ensembles.data import datasets
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from ensembles.runs.checkpoint_import import import_checkpoints
from landscape.errors import InputError

import results_fixtures as fixtures
from imported_runs import checkpoint, evaluate
from measured_runs import LINEAR_INPUT_SIZE, SHARPNESS, make_linear_run, make_run as make_digits_run
from tiny_runs import invoke, one_error_line, refused

MLP_ARGS = {"input_size": 12, "hidden": [8]}


def make_run(path, n_members=2, model="mlp", model_args=MLP_ARGS, seed=0):
    run_folder.create_run(path, dataset="digits", num_classes=3, model=model, model_args=model_args,
                    method="sam", seeds=[13, 17, 27][:n_members], rho=0.2)
    torch.manual_seed(seed)
    networks = [build(model, 3, **model_args) for _ in range(n_members)]
    for index, network in enumerate(networks):
        run_folder.save_member(path, index, network, epoch=3)
    return networks


def test_members_round_trip_bit_exactly_with_buffers(tmp_path):
    networks = make_run(tmp_path / "run", model="small_cnn", model_args={})
    # Give the BatchNorm buffers values that a default init would not have.
    for network in networks:
        for name, buffer in network.named_buffers():
            if buffer.dtype.is_floating_point:
                buffer.copy_(torch.rand_like(buffer) + 0.5)
            else:
                buffer.fill_(7)
    for index, network in enumerate(networks):
        run_folder.save_member(tmp_path / "run", index, network)
    run = run_folder.load_run(tmp_path / "run")
    assert run.member_indices == [0, 1]
    for saved, loaded in zip(networks, run.members):
        assert not loaded.training
        expected, actual = saved.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        for name in expected:
            assert expected[name].dtype == actual[name].dtype
            assert torch.equal(expected[name], actual[name]), name


def test_run_json_records_settings_status_and_versions(tmp_path):
    make_run(tmp_path / "run")
    config = run_folder.read_config(tmp_path / "run")
    assert config["method"] == "sam" and config["rho"] == 0.2 and config["seeds"] == [13, 17]
    assert [m["status"] for m in config["members"]] == ["done", "done"]
    assert config["members"][1]["epoch"] == 3 and config["members"][1]["seed"] == 17
    assert {"torch", "sharpdiv", "numpy", "python"} <= set(config["versions"])


def test_not_a_run_folder_gets_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a run folder"):
        run_folder.load_run(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        run_folder.load_run(tmp_path / "nowhere")
    run_folder.create_run(tmp_path / "empty", dataset="digits", num_classes=3, model="mlp", seeds=[1])
    with pytest.raises(InputError, match="no finished members"):
        run_folder.load_run(tmp_path / "empty")


def test_mismatched_member_names_the_member(tmp_path):
    make_run(tmp_path / "run")
    other = build("mlp", 3, input_size=12, hidden=[5])
    run_folder.save_member(tmp_path / "run", 1, other)
    with pytest.raises(InputError, match="member 1"):
        run_folder.load_run(tmp_path / "run")


TRAIN_DATA = "0123456789abcdef"  # a data fingerprint, as ensembles.data.datasets.data_digest gives


def sharpness_rows(value=1.0):
    return [{"scope": f"member-{i}", "metric": "sharpness/worst/l2/adaptive", "value": value + i,
             "stderr": 0.1, "dataset": "digits", "split": "train", "data": TRAIN_DATA, "rho": 0.5, "m": 5,
             "n_batches": 100, "seed": 13} for i in range(2)]


def test_results_append_read_and_find_by_settings(tmp_path):
    make_run(tmp_path / "run")
    run_folder.append_results(tmp_path / "run", sharpness_rows())
    run_folder.append_results(tmp_path / "run", [{"scope": "ensemble", "metric": "accuracy", "value": 0.9,
                                            "dataset": "digits", "split": "test",
                                            "corruption": "fog", "severity": 3, "combine": "probs",
                                            "data": "fog"}])
    table = run_folder.read_results(tmp_path / "run")
    assert len(table) == 3
    assert list(table.columns[:9]) == list(run_folder.RESULT_COLUMNS)
    assert set(table["run"]) == {"run"}
    settings = {"rho": 0.5, "m": 5, "n_batches": 100, "seed": 13}
    found = run_folder.find_results(tmp_path / "run", settings, TRAIN_DATA, scope="member-1")
    assert found["value"].tolist() == [2.0]
    # Same settings spelled with a float and in another order still match.
    spelled = {"seed": 13.0, "n_batches": 100, "m": 5, "rho": 0.5}
    assert len(run_folder.find_results(tmp_path / "run", spelled, TRAIN_DATA)) == 2
    assert run_folder.find_results(tmp_path / "run", {**settings, "rho": 0.25}, TRAIN_DATA).empty
    fog = run_folder.find_results(tmp_path / "run", {"combine": "probs"}, "fog", corruption="fog", severity=3)
    assert fog["value"].tolist() == [0.9]


def test_rewriting_a_key_replaces_the_row(tmp_path):
    make_run(tmp_path / "run")
    run_folder.append_results(tmp_path / "run", sharpness_rows(1.0))
    run_folder.append_results(tmp_path / "run", sharpness_rows(5.0))
    table = run_folder.read_results(tmp_path / "run")
    assert sorted(table["value"]) == [5.0, 6.0]


def test_new_weights_make_old_rows_stale(tmp_path):
    make_run(tmp_path / "run")
    run_folder.append_results(tmp_path / "run", sharpness_rows())
    settings = {"rho": 0.5, "m": 5, "n_batches": 100, "seed": 13}
    torch.manual_seed(99)
    run_folder.save_member(tmp_path / "run", 0, build("mlp", 3, **MLP_ARGS))
    table = run_folder.read_results(tmp_path / "run")
    assert table.set_index("scope")["stale"].to_dict() == {"member-0": True, "member-1": False}
    assert run_folder.find_results(tmp_path / "run", settings, TRAIN_DATA)["scope"].tolist() == ["member-1"]


def _append_many(path, writer, count):
    for i in range(count):
        run_folder.append_results(path, [{"scope": "ensemble", "metric": f"m{writer}-{i}", "value": i}])


def test_two_processes_appending_at_once_keep_all_rows(tmp_path):
    make_run(tmp_path / "run")
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(tmp_path / "run", w, 15)) for w in range(2)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
        assert process.exitcode == 0
    table = run_folder.read_results(tmp_path / "run")
    assert len(table) == 30
    assert set(table["metric"]) == {f"m{w}-{i}" for w in range(2) for i in range(15)}


def test_compaction_keeps_the_newest_row_per_key(tmp_path):
    make_run(tmp_path / "run")
    run_folder.append_results(tmp_path / "run", sharpness_rows(1.0))
    run_folder.append_results(tmp_path / "run", sharpness_rows(3.0))
    run_folder.append_results(tmp_path / "run", [{"scope": "ensemble", "metric": "nll", "value": float("nan")}])
    before = run_folder.read_results(tmp_path / "run")
    run_folder.compact_results(tmp_path / "run")
    assert len(list((tmp_path / "run" / "results").glob("part-*.parquet"))) == 1
    after = run_folder.read_results(tmp_path / "run")
    def comparable(table):  # pandas spells a missing text value None or NaN depending on the source
        table = table.sort_values("key").reset_index(drop=True).astype(object)
        return table.where(table.notna(), None)

    pd.testing.assert_frame_equal(comparable(before), comparable(after))
    assert np.isnan(after.set_index("metric").loc["nll", "value"])


def test_settings_of_mixed_types_and_lists_are_stored(tmp_path):
    make_run(tmp_path / "run")
    run_folder.append_results(tmp_path / "run", [
        {"scope": "ensemble", "metric": "a", "value": 1, "members": [0, 1], "note": "x", "data": TRAIN_DATA},
        {"scope": "ensemble", "metric": "b", "value": 2, "note": 3},
    ])
    table = run_folder.read_results(tmp_path / "run").set_index("metric")
    assert table.loc["a", "members"] == "[0, 1]"
    assert table.loc["b", "note"] == "3"
    assert len(run_folder.find_results(tmp_path / "run", {"members": [0, 1], "note": "x"}, TRAIN_DATA)) == 1


def test_a_missing_member_file_is_named_once(tmp_path):
    make_run(tmp_path / "run")
    (tmp_path / "run" / "member-1.safetensors").unlink()
    with pytest.raises(InputError) as error:
        run_folder.load_run(tmp_path / "run")
    assert str(error.value).count("member 1 of") == 1 and "member-1.safetensors is missing" in str(error.value)


# ----------------------------------------------------------------------------------------------
# the results table: a location is stored, not keyed


def test_the_same_grid_point_placed_an_ulp_apart_is_one_row(tmp_path):
    # what another CPU computes for the same measurement: the place differs in its last bit
    path = fixtures.make_run(tmp_path / "run")
    run_folder.append_results(path, [fixtures.density_row(3, 0.25, value=0.5)])
    run_folder.append_results(path, [fixtures.density_row(3, math.nextafter(0.25, 1.0), value=0.75)])
    table = run_folder.read_results(path)
    assert len(table) == 1 and table["value"].tolist() == [0.75]  # the newer replaced it: one key
    assert table["eigenvalue"].tolist() == [math.nextafter(0.25, 1.0)]  # its place is stored beside it
    assert "eigenvalue" not in table["settings"].iloc[0] and '"grid_index": 3' in table["settings"].iloc[0]


def test_rows_written_before_keep_their_place_as_a_setting_and_still_read(tmp_path):
    path = fixtures.make_run(tmp_path / "run")
    old = {key: value for key, value in fixtures.density_row(3, 0.25).items() if key != "grid_index"}
    fixtures.append_as_before_grid_indices(path, [old, {**old, "eigenvalue": 0.5}])
    table = run_folder.read_results(path)
    assert table["eigenvalue"].tolist() == [0.25, 0.5] and all('"eigenvalue"' in text for text in table["settings"])


def test_two_rows_of_one_key_in_one_append_are_refused(tmp_path):
    # a grid written without its index would collapse into one row per measurement: refused, nothing stored
    path = fixtures.make_run(tmp_path / "run")
    rows = [{key: value for key, value in fixtures.density_row(0, x).items() if key != "grid_index"}
            for x in (0.1, 0.2)]
    with pytest.raises(ValueError, match="rows of a grid need their grid index"):
        run_folder.append_results(path, rows)
    assert run_folder.read_results(path).empty


@pytest.fixture
def checkpoints(tmp_path):
    return [checkpoint(tmp_path / f"m{i}.pt", i) for i in range(2)]


@pytest.fixture
def run(tmp_path, checkpoints):
    return import_checkpoints(tmp_path / "run", checkpoints, model="small_cnn", num_classes=10, dataset="digits")


# ----------------------------------------------------------------------------------------------
# run.json


@pytest.mark.parametrize("damage, field", [
    (lambda c: [c], "list"),
    (lambda c: {k: v for k, v in c.items() if k != "num_classes"}, "'num_classes'"),
    (lambda c: {**c, "num_classes": "ten"}, "'num_classes'"),
    (lambda c: {k: v for k, v in c.items() if k != "dataset"}, "'dataset'"),
    (lambda c: {**c, "dataset": 10}, "'dataset'"),
    (lambda c: {k: v for k, v in c.items() if k != "model"}, "'model'"),
    (lambda c: {**c, "model": ["small_cnn"]}, "'model'"),
    (lambda c: {k: v for k, v in c.items() if k != "model_args"}, "'model_args'"),
    (lambda c: {**c, "model_args": [32]}, "'model_args'"),
    (lambda c: {k: v for k, v in c.items() if k != "members"}, "'members'"),
    (lambda c: {**c, "members": {"0": "done"}}, "'members'"),
    (lambda c: {**c, "members": [1, 2]}, "members[0]"),
], ids=["list", "no-num_classes", "text-num_classes", "no-dataset", "number-dataset", "no-model", "list-model",
        "no-model_args", "list-model_args", "no-members", "dict-members", "int-members"])
def test_damaged_run_json_is_one_line_naming_file_and_field(run, damage, field):
    config = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(damage(config)))
    line = one_error_line(evaluate(run))
    assert str(run / "run.json") in line and field in line


def test_a_valid_run_json_still_reads(run):
    assert run_folder.read_config(run)["num_classes"] == 10


# ----------------------------------------------------------------------------------------------
# member weights


@pytest.mark.parametrize("damage", [lambda data: data[:len(data) // 2], lambda data: b"\x07garbage" * 64],
                         ids=["truncated", "garbage"])
def test_damaged_member_weights_name_the_file_and_the_fix(run, damage):
    member = run_folder.member_path(run, 1)
    member.write_bytes(damage(member.read_bytes()))
    line = one_error_line(evaluate(run))
    assert str(member) in line and "re-import" in line and "retrain" in line


def test_rows_of_a_table_without_the_data_column_are_readable_but_never_reused(tmp_path):
    run = make_linear_run(tmp_path / "run", "digits")
    row = {"scope": "member-0", "metric": "accuracy", "value": 0.5, "dataset": "digits", "split": "test"}
    run_folder.append_results(run, [row])
    part = next((run / run_folder.RESULTS_DIR).glob("part-*.parquet"))
    old = pd.read_parquet(part).drop(columns=["data"])  # as written before the column existed
    old.to_parquet(part, index=False)
    table = run_folder.read_results(run, current_only=True)
    assert table["value"].tolist() == [0.5] and table["data"].isna().all()  # reports still see it
    digest = datasets.data_digest("digits", split="test")
    assert run_folder.find_results(run, {}, digest, scope="member-0").empty
    assert run_folder.find_results(run, {}, scope="member-0").empty
    run_folder.append_results(run, [{**row, "value": 0.75, "data": digest}])
    assert run_folder.find_results(run, {}, digest, scope="member-0")["value"].tolist() == [0.75]
    assert run_folder.read_results(run, current_only=True)["value"].tolist() == [0.75]  # the unknown-data row is stale


def test_rows_carry_the_digest_taken_when_the_weights_were_read(tmp_path):
    run = make_linear_run(tmp_path / "run", "digits")
    loaded = run_folder.load_run(run)
    torch.manual_seed(5)
    run_folder.save_member(run, 0, build("mlp", 10, input_size=LINEAR_INPUT_SIZE, hidden=[]))
    row = {"scope": "member-1", "metric": "accuracy", "value": 0.5, "data": "d"}
    run_folder.append_results(loaded, [row])  # member 1 did not change: stored
    try:
        run_folder.append_results(loaded, [{**row, "scope": "member-0"}])
    except Exception as error:  # noqa: BLE001 - the type is checked below
        assert type(error).__name__ == "InputError" and "changed during the measurement" in str(error)
    else:
        raise AssertionError("rows of replaced weights were stored")
    assert run_folder.read_results(run)["scope"].tolist() == ["member-1"]


MLP = {"input_size": 3 * 32 * 32, "hidden": [6]}


def test_a_member_file_holding_nan_is_refused_when_loaded(tmp_path):
    path = make_digits_run(tmp_path / "run", model="mlp", model_args=MLP)
    state = run_folder.load_member_state(path, 1)
    name = next(n for n, t in state.items() if t.is_floating_point())
    state[name].view(-1)[0] = math.nan
    run_folder.save_member(path, 1, state)
    with pytest.raises(InputError, match=rf"member-1\.safetensors: tensor '{re.escape(name)}' holds NaN"):
        run_folder.load_run(path)
    line = refused(invoke("sharpness", path, "--rho", "0.5", *SHARPNESS, "--device", "cpu"),
                   "member-1.safetensors", name, "NaN")
    assert "member-0" not in line
    assert run_folder.read_results(path).empty  # the members are loaded together, before any row


def test_a_library_model_is_rebuilt_with_a_warning_when_its_library_version_changed(tmp_path):
    """The builder's defaults are part of the module and run.json's model_args hold only what was
    given: a later command rebuilding torchvision:resnet18 under another torchvision says so."""
    from importlib.metadata import version

    path = tmp_path / "run"
    run_folder.create_run(path, dataset="digits", num_classes=10, model="torchvision:resnet18", seeds=[1])
    config = run_folder.read_config(path)
    assert config["versions"]["torchvision"] == version("torchvision")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_folder.build_member_model(config)  # same version: silent
    config["versions"]["torchvision"] = "0.0.1"
    with pytest.warns(UserWarning, match="torchvision 0.0.1"):
        run_folder.build_member_model(config)
    zoo_config = {**config, "model": "mlp", "model_args": {"input_size": 4, "hidden": [2]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_folder.build_member_model(zoo_config)  # the zoo's models are sharpdiv's own


# ----------------------------------------------------------------------------------------------
# a bad results part is named and skipped


def test_a_corrupt_or_foreign_results_part_is_named_once_and_the_others_read(tmp_path, capsys):
    run = fixtures.measured_run(tmp_path / "run")
    good = run_folder.read_results(run)
    corrupt, foreign = fixtures.bad_results_parts(run)
    table = run_folder.read_results(run)
    pd.testing.assert_frame_equal(table, good)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert str(corrupt) in lines[0] and "not a readable parquet file" in lines[0] and "delete it" in lines[0]
    assert str(foreign) in lines[1] and "lacks the columns scope, metric, value" in lines[1]
    run_folder.read_results(run)
    assert capsys.readouterr().err == ""  # named once per file, not at every read
