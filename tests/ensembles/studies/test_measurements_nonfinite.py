"""Non-finite numbers in the measurement commands (ensembles.studies.measurements): a NaN or an
overflow exits with status 2, names the member, keeps the earlier members' rows and stores none of its
own; a stored NaN row is measured again."""
import dataclasses
import math

import numpy as np
import pytest

import landscape.connectivity
import landscape.fisher
import landscape.hessian
import landscape.sharpness
from ensembles.runs import run_folder
from ensembles.studies.measurements import fisher_path

from measured_runs import SHARPNESS, make_run
from tiny_runs import invoke, refused


MLP = {"input_size": 3 * 32 * 32, "hidden": [6]}


def scopes_of(path, metric_prefix=""):
    table = run_folder.read_results(path, current_only=True)
    if table.empty:
        return set()
    return set(table[table["metric"].str.startswith(metric_prefix)]["scope"])


# ----------------------------------------------------------------------------------------------
# sharpness at extreme radii, through the command


@pytest.fixture
def digits_run(tmp_path):
    return make_run(tmp_path / "run", model="mlp", model_args=MLP)


@pytest.mark.parametrize("rho, kind, expected", [
    ("1e9", "worst", "perturbed loss is nan"),
    ("1e9", "average", "perturbed loss is nan"),
    ("1e19", "worst", "too large"),
    ("1e30", "worst", "too large"),
    ("1e30", "average", "perturbed loss is nan"),
    ("1e300", "worst", "too large"),
    ("1e300", "average", "too large"),
])
def test_sharpness_command_at_extreme_rho_exits_2_without_rows(tmp_path, rho, kind, expected):
    path = make_run(tmp_path / "run")  # the small CNN of the repro (0 ± 0 at 1e9)
    result = invoke("sharpness", path, "--rho", rho, "--kind", kind, "--n-samples", 2, *SHARPNESS, "--device", "cpu")
    refused(result, expected, f"rho={float(rho):g}")
    assert run_folder.read_results(path).empty


def test_sharpness_command_names_the_member_and_keeps_earlier_members_rows(digits_run, monkeypatch):
    original = landscape.sharpness.worst_case_sharpness
    calls = []

    def nan_for_member_1(model, *args, **kwargs):
        calls.append(model)
        result = original(model, *args, **kwargs)
        return dataclasses.replace(result, value=math.nan) if len(calls) == 2 else result

    monkeypatch.setattr(landscape.sharpness, "worst_case_sharpness", nan_for_member_1)
    refused(invoke("sharpness", digits_run, "--rho", "0.5", *SHARPNESS, "--device", "cpu"),
            "run: member-1 sharpness/worst/l2/adaptive (rho=0.5", "value nan", "not stored",
            "the rows of member-0 measured before it are")
    assert scopes_of(digits_run) == {"member-0"}  # no member-1 row, no ensemble mean of the rest


def test_a_stored_nan_row_is_measured_again_not_reused(digits_run):
    settings = {"dataset": "digits", "split": "train", "rho": 0.5, "m": 4, "n_batches": 3, "seed": 5,
                "logit_normalization": False, "n_iters": 2, "n_restarts": 1}
    run_folder.append_results(digits_run, [{"scope": f"member-{i}", "metric": m, "value": math.nan, **settings}
                                     for i in (0, 1) for m in ("sharpness/worst/l2/adaptive",
                                                               "sharpness-error/worst/l2/adaptive")])
    result = invoke("sharpness", digits_run, "--rho", "0.5", *SHARPNESS, "--device", "cpu")
    assert result.exit_code == 0 and "2 measured now" in result.output, result.output
    rows = run_folder.read_results(digits_run, current_only=True)
    newest = rows[rows["metric"] == "sharpness/worst/l2/adaptive"].sort_values("created").groupby("scope").last()
    assert np.isfinite(newest["value"]).all()


# ----------------------------------------------------------------------------------------------
# hessian, fisher, connectivity


def nan_on_second_call(monkeypatch, module, name, poison):
    original, calls = getattr(module, name), []

    def wrapper(*args, **kwargs):
        calls.append(args)
        result = original(*args, **kwargs)
        return poison(result) if len(calls) == 2 else result

    monkeypatch.setattr(module, name, wrapper)


def test_hessian_trace_nan_exits_2_and_stores_only_the_finite_member(digits_run, monkeypatch):
    nan_on_second_call(monkeypatch, landscape.hessian, "hessian_trace",
                       lambda estimate: dataclasses.replace(estimate, value=math.nan))
    refused(invoke("hessian", digits_run, "--n-examples", 8, "--n-probes", 2, "--batch-size", 8, "--device", "cpu"),
            "member-1 hessian/trace", "n_probes=2", "value nan", "member-0")
    assert scopes_of(digits_run) == {"member-0"}


def test_fisher_nan_exits_2_and_writes_neither_rows_nor_array(digits_run, monkeypatch):
    def poison(scores):
        scores = scores.clone()
        scores[3] = math.nan
        return scores

    nan_on_second_call(monkeypatch, landscape.fisher, "per_sample_fisher_trace", poison)
    refused(invoke("fisher", digits_run, "--n-examples", 8, "--device", "cpu"),
            "member-1 fisher/mean", "n_examples=8", "1 of 8 per-sample traces", "member-0")
    assert scopes_of(digits_run) == {"member-0"}
    assert fisher_path(digits_run, 0, "train").is_file() and not fisher_path(digits_run, 1, "train").exists()


def test_connectivity_nan_exits_2_without_the_pair_rows(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run", n_members=3, model="mlp", model_args=MLP)
    nan_on_second_call(monkeypatch, landscape.connectivity, "loss_barrier",
                       lambda barrier: dataclasses.replace(barrier, value=math.nan))
    refused(invoke("connectivity", path, "--n-examples", 8, "--alphas", 3, "--device", "cpu"),
            "pair-0-2 connectivity/barrier", "value nan", "pair-0-1")
    assert scopes_of(path) == {"pair-0-1"}
