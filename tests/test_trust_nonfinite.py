"""Non-finite numbers (and --rho 1e300) are refused, never stored,
never reported as 0 and never averaged away.

- weights holding NaN/inf are refused at import and whenever a run's members are loaded;
- sharpness whose perturbed loss overflows raises (it used to return 0 ± 0 at rho 1e9 ... 1e19, NaN
  for the average case, and crash at 1e30 and 1e300); the commands say so in one line and exit 2;
- a measurement (sharpness, hessian, fisher, connectivity) giving a non-finite value exits 2 without
  storing that member's rows (earlier members' rows stay, and the message says so);
- reports give a run NaN (and name it as lacking the number) instead of the mean over the members
  that have a finite value.
"""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import cli
import landscape.connectivity
import landscape.fisher
import landscape.hessian
import landscape.sharpness
import results_fixtures as fixtures
from ensembles.runs import run_folder
from ensembles.studies.measurements import fisher_path
from ensembles.models.zoo import build
from landscape.errors import InputError, NonFiniteError
from reports.collect import SharpnessSpec, collect, missing_measurements, per_run, run_table, sharpness_per_run
from test_measurements import SHARPNESS, make_run

MLP = {"input_size": 3 * 32 * 32, "hidden": [6]}


def invoke(*arguments):
    return CliRunner().invoke(cli.main, [str(a) for a in arguments])


def refused(result, *fragments):
    """Exit 2 with one line on stderr holding every fragment, and no traceback."""
    assert result.exit_code == 2, result.output + repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("sharpdiv: error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def scopes_of(path, metric_prefix=""):
    table = run_folder.read_results(path, current_only=True)
    if table.empty:
        return set()
    return set(table[table["metric"].str.startswith(metric_prefix)]["scope"])


# ----------------------------------------------------------------------------------------------
# weights


def test_import_refuses_nan_and_inf_weights_naming_file_and_tensor(tmp_path):
    network = build("small_cnn", 10, width=4)
    name = next(n for n, t in network.state_dict().items() if t.is_floating_point() and t.dim() == 4)
    good = tmp_path / "good.pt"
    torch.save(network.state_dict(), good)
    for value, kind in ((math.nan, "NaN"), (-math.inf, "inf")):
        state = {n: t.clone() for n, t in network.state_dict().items()}
        state[name].view(-1)[5] = value
        file = tmp_path / f"bad-{kind}.pt"
        torch.save(state, file)
        out = tmp_path / f"run-{kind}"
        result = invoke("import", "--model", "small_cnn", "--width", 4, "--num-classes", 10, "--data", "digits",
                        out, good, file)
        refused(result, str(file), repr(name), kind, "1 of")
        assert not out.exists()  # all or nothing
    ok = invoke("import", "--model", "small_cnn", "--width", 4, "--num-classes", 10, "--data", "digits",
                tmp_path / "fine", good)
    assert ok.exit_code == 0, ok.output


def test_a_member_file_holding_nan_is_refused_when_loaded(tmp_path):
    path = make_run(tmp_path / "run", model="mlp", model_args=MLP)
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


# ----------------------------------------------------------------------------------------------
# sharpness at extreme radii, landscape level


def tiny_model_and_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    inputs = torch.randn(3, 4, 5)
    targets = torch.randint(0, 3, (3, 4))
    return model, list(zip(inputs, targets))


@pytest.mark.parametrize("rho", [1e15, 1e19, 1e30, 1e300])  # logits ~ rho³ overflow float32 from 1e13
@pytest.mark.parametrize("kind", ["worst", "average"])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_sharpness_at_a_radius_that_overflows_raises_never_returns_0_or_nan(rho, kind, norm):
    model, batches = tiny_model_and_batches()
    measure = landscape.sharpness.worst_case_sharpness if kind == "worst" else \
        landscape.sharpness.average_case_sharpness
    options = {"n_iters": 3} if kind == "worst" else {"n_draws": 2}
    with pytest.raises(InputError, match=re.escape(f"rho={rho:g}")) as error:
        measure(model, F.cross_entropy, batches, rho, norm, True, **options)
    assert "\n" not in str(error.value)
    assert "too large" in str(error.value) or ("overflows" in str(error.value)
                                               and isinstance(error.value, NonFiniteError))


@pytest.mark.parametrize("rho", [0.5, 1e9])
def test_sharpness_at_a_radius_that_does_not_overflow_is_measured(rho):
    model, batches = tiny_model_and_batches()
    result = landscape.sharpness.worst_case_sharpness(model, F.cross_entropy, batches, rho, n_iters=3)
    assert math.isfinite(result.value) and result.value > 0


def test_a_non_finite_clean_loss_is_refused_as_such():
    model, batches = tiny_model_and_batches()
    batches[1] = (torch.full_like(batches[1][0], math.nan), batches[1][1])
    for measure in (landscape.sharpness.worst_case_sharpness, landscape.sharpness.average_case_sharpness):
        with pytest.raises(NonFiniteError, match="the clean loss is nan on batch 1;.*check the weights and the data"):
            measure(model, F.cross_entropy, batches, 0.5)


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


# ----------------------------------------------------------------------------------------------
# reports


SPEC = SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5")


def report_inputs(tmp_path, member_values, with_mean_row):
    path = fixtures.make_run(tmp_path / "run")
    rows = fixtures.sharpness_rows(member_values, with_mean_row=with_mean_row)
    rows += fixtures.evaluation_rows([0.8, math.nan, 0.6], {"accuracy": 0.85, "der": 0.3})
    run_folder.append_results(path, rows)
    table = run_table([path])
    return str(path), table, collect([path], table)


@pytest.mark.parametrize("member_values, with_mean_row", [
    ([1.0, math.nan, 3.0], False),  # a NaN member: the mean of 1 and 3 is not the run's value
    ([1.0, math.nan, 3.0], True),   # ... nor when the stored mean row is NaN
    ([1.0, 3.0], False),            # a member without any row (the run lists three)
])
def test_a_run_with_a_member_lacking_the_value_is_nan_and_named(tmp_path, member_values, with_mean_row):
    path, table, results = report_inputs(tmp_path, member_values, with_mean_row)
    assert math.isnan(sharpness_per_run(results, SPEC)[path])
    notes = [str(note) for note in missing_measurements(results, table, sharpness=SPEC, on="test")]
    assert any("sharpness/worst/l2/adaptive@0.5 for every member" in note and path in note for note in notes), notes


def test_member_accuracy_with_a_nan_member_is_nan_not_the_others_mean(tmp_path):
    path, table, results = report_inputs(tmp_path, [1.0, 2.0, 3.0], True)
    assert math.isnan(per_run(results, "accuracy", scope="members", on="test")[path])
    assert per_run(results, "accuracy", on="test")[path] == pytest.approx(0.85)  # the ensemble row is whole
    assert sharpness_per_run(results, SPEC)[path] == pytest.approx(2.0)  # complete members: a number
