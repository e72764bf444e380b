"""Run folders round-trip bit-exactly; the results table keeps every writer's rows and finds stored
rows by their settings, and new weights make old rows stale."""
import multiprocessing
import os

import numpy as np
import pandas as pd
import pytest
import torch

from ensembles.runs import run_folder
from ensembles.runs.files import atomic_path
from ensembles.models.zoo import build
from landscape.errors import InputError

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


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_a_missing_member_file_is_named_once(tmp_path):
    make_run(tmp_path / "run")
    (tmp_path / "run" / "member-1.safetensors").unlink()
    with pytest.raises(InputError) as error:
        run_folder.load_run(tmp_path / "run")
    assert str(error.value).count("member 1 of") == 1 and "member-1.safetensors is missing" in str(error.value)
