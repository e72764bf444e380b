"""The measurement commands end to end on tiny digits runs (ensembles.studies.measurements): the
rows they store are the ones the landscape functions give on the documented data, repeated calls
compute nothing, bad input fails before any row is written, rows record the data and weights they
came from, and the reference code's ascent is stored apart.

References: each stored value is compared with a direct call of the landscape function on data
built here from the documented rules (seeded permutation, first N samples), the summary rows with
NumPy (mean, std, quantiles, max) and the ensemble rows with the mean and ``std(ddof=1)/√M`` of
the member rows."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import cli
import landscape.connectivity
import landscape.fisher
import landscape.hessian
import landscape.sharpness
from cli import main
from ensembles.data import datasets
from ensembles.models.zoo import build
from ensembles.runs import run_folder
from ensembles.studies.measurements import fisher_path
from landscape import sharpness
from reports.collect import SharpnessSpec, collect, sharpness_per_run

from disk_layouts import write_cifar10
from measured_runs import (LINEAR_INPUT_SIZE, SHARPNESS, counting, documented_batches, first_member, make_linear_run,
                           make_run, stored_rows)
from tiny_runs import invoke

@pytest.fixture(scope="module")
def run_path(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "cnn")


def ok(*arguments):
    result = invoke(*arguments, "--device", "cpu")
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def rows_of(path, metric, **where):
    table = run_folder.read_results(path, current_only=True)
    table = table[table["metric"] == metric]
    for column, value in where.items():
        table = table[table[column] == value]
    return table


def settings_of(row):
    return json.loads(row["settings"])


def split(name):
    return datasets.load_dataset("digits", split=name)


# ----------------------------------------------------------------------------------------------
# sharpness

def test_sharpness_rows_equal_landscape_and_repeat_computes_nothing(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run")
    calls = counting(monkeypatch, landscape.sharpness, "worst_case_sharpness")
    ok("sharpness", path, "--rho", "0.5", *SHARPNESS)
    assert len(calls) == 2  # one per member

    metric = "sharpness/worst/l2/adaptive"
    members = rows_of(path, metric).set_index("scope")
    assert {"member-0", "member-1", "ensemble"} == set(members.index)
    row = members.loc["member-0"]
    assert (row["dataset"], row["split"]) == ("digits", "train")
    assert settings_of(row) == {"rho": 0.5, "m": 4, "n_batches": 3, "seed": 5, "n_iters": 2, "n_restarts": 1,
                                "logit_normalization": False}
    generator = torch.Generator().manual_seed(5)
    direct = landscape.sharpness.worst_case_sharpness(first_member(path), F.cross_entropy, documented_batches(4, 3, 5),
                                                      0.5, "l2", True, n_iters=2, generator=generator)
    assert row["value"] == pytest.approx(direct.value, rel=1e-6)
    assert row["stderr"] == pytest.approx(direct.stderr, rel=1e-6)
    errors = rows_of(path, "sharpness-error/worst/l2/adaptive").set_index("scope")
    assert errors.loc["member-0", "value"] == pytest.approx(direct.error_increase, abs=1e-7)

    values = members.loc[["member-0", "member-1"], "value"].to_numpy()
    mean = members.loc["ensemble"]
    assert mean["aggregate"] == "mean"
    assert mean["value"] == pytest.approx(values.mean(), rel=1e-12)
    assert mean["stderr"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(2), rel=1e-12)
    assert errors.loc["ensemble", "value"] == pytest.approx(errors.loc[["member-0", "member-1"], "value"].mean())

    calls.clear()  # the reference above went through the wrapper too
    parts = sorted((path / "results").glob("part-*.parquet"))
    again = ok("sharpness", path, "--rho", "0.5", *SHARPNESS)
    assert len(calls) == 0, "a repeated call must compute nothing"
    assert sorted((path / "results").glob("part-*.parquet")) == parts, "and write nothing"
    assert "0 measured now, 2 stored" in again.output

    ok("sharpness", path, "--rho", "0.5,0.25", *SHARPNESS)
    assert [c[3] for c in calls] == [0.25, 0.25]  # only the new radius, for each member
    new = rows_of(path, metric)
    assert sorted(new["rho"].unique()) == [0.25, 0.5]
    assert len(new[new["scope"] == "ensemble"]) == 2


def test_average_case_rows_equal_landscape(tmp_path):
    path = make_run(tmp_path / "run", model="mlp", model_args={"input_size": 3 * 32 * 32, "hidden": [6]})
    ok("sharpness", path, "--kind", "average", "--norm", "linf", "--standard", "--rho", "0.1", "--n-samples", 3,
       *SHARPNESS)
    row = rows_of(path, "sharpness/average/linf/standard", scope="member-1").iloc[0]
    assert settings_of(row)["n_samples"] == 3 and "n_iters" not in settings_of(row)
    direct = landscape.sharpness.average_case_sharpness(
        first_member(path, 1), F.cross_entropy, documented_batches(4, 3, 5), 0.1, "linf", False, n_draws=3,
        generator=torch.Generator().manual_seed(5))
    assert row["value"] == pytest.approx(direct.value, rel=1e-6)


@pytest.mark.parametrize("arguments, message", [
    (("--rho", "0"), "rho must be finite and > 0"),
    (("--rho", "0.5,-1"), "rho must be finite and > 0"),
    (("--batch-size", 50, "--n-batches", 30), "1500 samples, but digits train has only {train}"),
    (("--exclude", "nothing_like_this"), "matches no trainable parameter"),
])
def test_sharpness_bad_input_exits_2_without_rows(tmp_path, arguments, message):
    good = make_run(tmp_path / "good")
    result = invoke("sharpness", good, *arguments, "--n-iters", 1)
    assert result.exit_code == 2
    assert message.format(train=len(split("train"))) in result.output
    assert run_folder.read_results(good).empty


def test_unknown_kind_or_norm_is_a_usage_error(run_path):
    for option, value in (("--kind", "best"), ("--norm", "l1")):
        result = invoke("sharpness", run_path, option, value)
        assert result.exit_code == 2 and "Invalid value" in result.output


# ----------------------------------------------------------------------------------------------
# Hessian


def test_hessian_rows_equal_landscape_and_are_reused(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run", model="mlp", model_args={"input_size": 3 * 32 * 32, "hidden": [3]})
    options = ("--n-examples", 24, "--batch-size", 10, "--n-probes", 4, "--seed", 3)
    ok("hessian", path, *options, "--trace", "--eigenvalues", 2, "--density")

    images = split("train")
    chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(3))[:24]
    batches = [(images.batch(rows.numpy()), images.targets[rows]) for rows in chosen.split(10)]
    model = first_member(path)
    trace = landscape.hessian.hessian_trace(model, F.cross_entropy, batches, n_probes=4,
                                            generator=torch.Generator().manual_seed(3))
    row = rows_of(path, "hessian/trace", scope="member-0").iloc[0]
    assert row["value"] == pytest.approx(trace.value, rel=1e-5)
    assert row["stderr"] == pytest.approx(trace.stderr, rel=1e-5)
    assert settings_of(row) == {"n_probes": 4, "method": "hutchinson", "n_examples": 24, "batch_size": 10, "seed": 3}
    traces = rows_of(path, "hessian/trace").set_index("scope")
    members = traces.loc[["member-0", "member-1"], "value"].to_numpy()
    assert traces.loc["ensemble", "aggregate"] == "mean"
    assert traces.loc["ensemble", "value"] == pytest.approx(members.mean())
    assert traces.loc["ensemble", "stderr"] == pytest.approx(np.std(members, ddof=1) / math.sqrt(2))

    top = landscape.hessian.hessian_eigenvalues(model, F.cross_entropy, batches, k=2,
                                                generator=torch.Generator().manual_seed(3)).eigenvalues
    eigen = rows_of(path, "hessian/eigenvalue", scope="member-0").sort_values("rank")
    assert eigen["rank"].tolist() == [1, 2]
    np.testing.assert_allclose(eigen["value"].to_numpy(), top.numpy(), rtol=1e-5)

    spectrum = landscape.hessian.hessian_spectral_density(model, F.cross_entropy, batches, n_iters=100, grid=200,
                                                          generator=torch.Generator().manual_seed(3))
    density = rows_of(path, "hessian/density", scope="member-0").sort_values("eigenvalue")
    assert len(density) == 200
    np.testing.assert_allclose(density["eigenvalue"].to_numpy(), spectrum.grid.numpy(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(density["value"].to_numpy(), spectrum.density.numpy(), rtol=1e-4, atol=1e-6)

    counts = [counting(monkeypatch, landscape.hessian, name)
              for name in ("hessian_trace", "hessian_eigenvalues", "hessian_spectral_density")]
    ok("hessian", path, *options, "--trace", "--eigenvalues", 2, "--density")
    ok("hessian", path, *options, "--eigenvalues", 1)  # fewer ranks: stored
    assert [len(c) for c in counts] == [0, 0, 0]
    ok("hessian", path, *options[:-1], 4)  # another seed: the trace only (the default), again
    assert [len(c) for c in counts] == [2, 0, 0]


# ----------------------------------------------------------------------------------------------
# Fisher


def test_fisher_array_and_rows_equal_landscape(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run")
    calls = counting(monkeypatch, landscape.fisher, "per_sample_fisher_trace")
    ok("fisher", path, "--n-examples", 30, "--batch-size", 16)
    assert len(calls) == 2

    images = split("train")
    for index in (0, 1):
        scores = np.load(fisher_path(path, index, "train"))
        direct = landscape.fisher.per_sample_fisher_trace(first_member(path, index), F.cross_entropy,
                                                          (images.batch(np.arange(30)), images.targets[:30]))
        np.testing.assert_allclose(scores, direct.numpy(), rtol=1e-5, atol=1e-8)
        stored = rows_of(path, "fisher/mean", scope=f"member-{index}").iloc[0]
        assert settings_of(stored) == {"n_examples": 30}
        exact = scores.astype(np.float64)
        assert stored["value"] == pytest.approx(exact.mean())
        assert stored["stderr"] == pytest.approx(exact.std(ddof=1) / math.sqrt(30))
        for metric, expected in (("fisher/q50", np.quantile(exact, 0.5)), ("fisher/q90", np.quantile(exact, 0.9)),
                                 ("fisher/q99", np.quantile(exact, 0.99)), ("fisher/max", exact.max())):
            assert rows_of(path, metric, scope=f"member-{index}").iloc[0]["value"] == pytest.approx(expected)

    calls.clear()  # the references above went through the wrapper too
    ok("fisher", path, "--n-examples", 30)
    assert len(calls) == 0  # stored rows and arrays: nothing to do
    fisher_path(path, 1, "train").unlink()
    ok("fisher", path, "--n-examples", 30)
    assert len(calls) == 1 and fisher_path(path, 1, "train").is_file()  # the lost array only


# ----------------------------------------------------------------------------------------------
# connectivity


def test_connectivity_rows_equal_landscape(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run", n_members=3)
    options = ("--n-examples", 40, "--alphas", 3, "--bn-examples", 48, "--batch-size", 20, "--seed", 2)
    ok("connectivity", path, *options, "--plane", "--grid", 3)

    test, train = split("test"), split("train")
    loader = [(test.batch(np.arange(start, start + 20)), test.targets[start:start + 20]) for start in (0, 20)]
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(2))[:48]
    bn_loader = [(train.batch(rows.numpy()), train.targets[rows]) for rows in chosen.split(20)]
    run = run_folder.load_run(path)
    barrier = landscape.connectivity.loss_barrier(run.members[0], run.members[2], F.cross_entropy, loader,
                                                  alphas=3, bn_batches=bn_loader)
    curve = rows_of(path, "connectivity/loss", scope="pair-0-2").sort_values("alpha")
    assert curve["alpha"].tolist() == [0.0, 0.5, 1.0]
    assert set(curve["bn_mode"]) == {barrier.interpolation.bn_mode} == {"reset"}
    np.testing.assert_allclose(curve["value"].to_numpy(), barrier.interpolation.loss.numpy(), rtol=1e-5)
    accuracy = rows_of(path, "connectivity/accuracy", scope="pair-0-2").sort_values("alpha")
    np.testing.assert_allclose(accuracy["value"].to_numpy(), barrier.interpolation.accuracy.numpy(), atol=1e-7)
    stored_barrier = rows_of(path, "connectivity/barrier", scope="pair-0-2").iloc[0]
    assert stored_barrier["value"] == pytest.approx(barrier.value, abs=1e-6)
    assert stored_barrier["alphas"] == 3
    assert rows_of(path, "connectivity/barrier_alpha", scope="pair-0-2").iloc[0]["value"] == barrier.alpha
    assert set(rows_of(path, "connectivity/barrier")["scope"]) == {"pair-0-1", "pair-0-2", "pair-1-2"}

    surface = landscape.connectivity.plane(run.members, F.cross_entropy, loader, grid=3, bn_batches=bn_loader)
    plane = rows_of(path, "plane/loss", scope="ensemble")
    assert len(plane) == 9 and set(plane["grid"]) == {3}
    for a, u in enumerate(surface.u.tolist()):
        for b, v in enumerate(surface.v.tolist()):
            cell = plane[np.isclose(plane["u"], u) & np.isclose(plane["v"], v)]
            assert cell["value"].item() == pytest.approx(float(surface.loss[a, b]), rel=1e-5)

    calls = counting(monkeypatch, landscape.connectivity, "loss_barrier")
    planes = counting(monkeypatch, landscape.connectivity, "plane")
    ok("connectivity", path, *options, "--plane", "--grid", 3)
    assert (len(calls), len(planes)) == (0, 0)
    ok("connectivity", path, *options, "--no-bn-reset")
    assert len(calls) == 3  # another BatchNorm mode is another measurement
    assert set(rows_of(path, "connectivity/barrier")["bn_mode"]) == {"reset", "interpolated"}


def test_connectivity_needs_two_members_and_writes_nothing(tmp_path):
    two = make_run(tmp_path / "two")
    one = make_run(tmp_path / "one", n_members=1)
    result = invoke("connectivity", two, one, "--n-examples", 8)
    assert result.exit_code == 2 and "at least two" in result.output
    result = invoke("connectivity", two, "--plane", "--n-examples", 8)
    assert result.exit_code == 2 and "--plane needs three members" in result.output
    assert run_folder.read_results(two).empty  # the good run got no partial rows either


def test_lanczos_steps_is_a_setting_of_the_eigenvalue_rows(tmp_path):
    make_run(tmp_path / "run")
    ok("hessian", str(tmp_path / "run"), "--eigenvalues", "1", "--lanczos-steps", "6", "--n-examples", "16", "--threads", "1")
    table = run_folder.read_results(tmp_path / "run")
    eigenvalues = table[table["metric"] == "hessian/eigenvalue"]
    assert len(eigenvalues) == 2 and set(eigenvalues["n_iters"]) == {6}


_TINY = ["--batch-size", "4", "--n-batches", "3", "--seed", "5", "--n-iters", "2", "--rho", "0.5", "--device", "cpu"]


def test_ascent_flag_reaches_the_measurement_and_is_stored_apart(tmp_path, monkeypatch):
    path = make_run(tmp_path / "run")
    seen = []
    original = landscape.sharpness.worst_case_sharpness

    def spy(*arguments, **options):
        seen.append(options.get("reference_ascent"))
        return original(*arguments, **options)

    monkeypatch.setattr(landscape.sharpness, "worst_case_sharpness", spy)
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY, "--ascent", "reference"])
    assert result.exit_code == 0, result.output
    assert seen == [True, True] and "reference code's ascent" in result.output
    rows = run_folder.read_results(path, current_only=True)
    member = rows[(rows["metric"] == "sharpness/worst/l2/adaptive") & (rows["scope"] == "member-0")]
    assert json.loads(member["settings"].iloc[0])["ascent"] == "reference"
    direct = original(first_member(path), torch.nn.functional.cross_entropy, documented_batches(4, 3, 5), 0.5,
                      n_iters=2, reference_ascent=True)
    assert member["value"].iloc[0] == pytest.approx(direct.value, rel=1e-6)

    seen.clear()  # the default ascent is not answered by the reference rows: measured anew, stored without the setting
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY])
    assert result.exit_code == 0, result.output
    assert seen == [False, False]
    rows = run_folder.read_results(path, current_only=True)
    ours = rows[(rows["metric"] == "sharpness/worst/l2/adaptive") & (rows["scope"] == "ensemble")]
    assert sorted(json.loads(text).get("ascent", "none") for text in ours["settings"]) == ["none", "reference"]

    seen.clear()
    again = CliRunner().invoke(main, ["sharpness", str(path), *_TINY, "--ascent", "reference"])
    assert again.exit_code == 0 and seen == [] and "0 measured now, 2 stored" in again.output

    # reports read one ascent at a time
    results = collect([path])
    reference = sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5:reference"))
    apgd = sharpness_per_run(results, SharpnessSpec.parse("sharpness/worst/l2/adaptive@0.5"))
    stored = {json.loads(text).get("ascent", "apgd"): value for text, value in zip(ours["settings"], ours["value"])}
    assert reference.iloc[0] == pytest.approx(stored["reference"]) and apgd.iloc[0] == pytest.approx(stored["apgd"])
    assert reference.iloc[0] != apgd.iloc[0]


@pytest.mark.parametrize("arguments, words", [
    (["--kind", "average", "--ascent", "reference"], "worst case only"),
])
def test_reference_ascent_of_an_average_case_is_refused(tmp_path, arguments, words):
    path = make_run(tmp_path / "run")
    result = CliRunner().invoke(main, ["sharpness", str(path), *_TINY, *arguments])
    assert result.exit_code == 2 and words in result.stderr
    assert run_folder.read_results(path).empty


def test_measurements_store_and_check_the_data_they_used(tmp_path):
    write_cifar10(tmp_path / "a", n_train=20, n_test=10, seed=0)
    write_cifar10(tmp_path / "b", n_train=20, n_test=10, seed=1)
    run = make_linear_run(tmp_path / "run", "cifar10")
    options = ["--batch-size", 5, "--n-batches", 2, "--n-iters", 2]
    first = invoke("sharpness", run, "--data-path", tmp_path / "a", *options)
    assert first.exit_code == 0 and "2 measured now" in first.output, first.output
    again = invoke("sharpness", run, "--data-path", tmp_path / "a", *options)
    assert again.exit_code == 0 and "0 measured now, 2 stored" in again.output, again.output
    other = invoke("sharpness", run, "--data-path", tmp_path / "b", *options)
    assert other.exit_code == 0 and "2 measured now" in other.output, other.output
    rows = stored_rows(run, metric="sharpness/worst/l2/adaptive")
    assert set(rows["data"]) == {datasets.data_digest("cifar10", tmp_path / "b", "train")}
    assert len(rows) == 3  # member-0, member-1, ensemble mean: the rows of data a are stale


# ----------------------------------------------------------------------------------------------
# weights read, weights stored


def test_a_member_replaced_during_a_measurement_stores_no_rows(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "data", n_train=20, n_test=10, seed=0)
    run = make_linear_run(tmp_path / "run", "cifar10")
    original = sharpness.worst_case_sharpness

    def replacing(*arguments, **options):  # someone writes new weights while member 0 is measured
        torch.manual_seed(99)
        run_folder.save_member(run, 0, build("mlp", 10, input_size=LINEAR_INPUT_SIZE, hidden=[]))
        monkeypatch.setattr(sharpness, "worst_case_sharpness", original)
        return original(*arguments, **options)

    monkeypatch.setattr(sharpness, "worst_case_sharpness", replacing)
    result = invoke("sharpness", run, "--data-path", tmp_path / "data", "--batch-size", 5, "--n-batches", 2,
                    "--n-iters", 2)
    assert result.exit_code == 2, result.output
    assert "changed during the measurement" in result.output and "member-0.safetensors" in result.output
    assert sum("changed during the measurement" in line for line in result.output.splitlines()) == 1
    assert "Traceback" not in result.output
    assert run_folder.read_results(run).empty


def test_measurements_read_the_data_root_the_run_was_trained_on(tmp_path, monkeypatch):
    """Without --data-path, sharpness reads the run's own data (run.json data_path), as evaluate
    does, not the default root; --data-path still wins."""
    monkeypatch.setenv("SHARPDIV_DATA", str(tmp_path / "default"))
    write_cifar10(tmp_path / "default", n_train=20, n_test=10, seed=1)
    write_cifar10(tmp_path / "own", n_train=20, n_test=10, seed=0)
    run = make_linear_run(tmp_path / "run", "cifar10")
    run_folder.update_config(run, data_path=str(tmp_path / "own"))
    options = ["--batch-size", 5, "--n-batches", 2, "--n-iters", 2]
    result = invoke("sharpness", run, *options)
    assert result.exit_code == 0, result.output
    assert set(stored_rows(run, metric="sharpness/worst/l2/adaptive")["data"]) == \
        {datasets.data_digest("cifar10", tmp_path / "own", "train")}
    result = invoke("sharpness", run, "--data-path", tmp_path / "default", *options)
    assert result.exit_code == 0 and "2 measured now" in result.output, result.output


def test_hessian_prints_every_eigenvalue_it_was_asked_for(tmp_path):
    from ensembles.models.zoo import build

    run = tmp_path / "run"
    model_args = {"input_size": 3 * 32 * 32, "hidden": [4]}
    run_folder.create_run(run, dataset="digits", num_classes=10, model="mlp", model_args=model_args, seeds=[0])
    run_folder.save_member(run, 0, build("mlp", 10, **model_args))
    arguments = ["hessian", str(run), "--eigenvalues", "3", "--lanczos-steps", "8", "--n-examples", "16",
                 "--device", "cpu", "--threads", "1"]
    for attempt in ("measured", "stored"):
        result = CliRunner().invoke(cli.main, arguments)
        assert result.exit_code == 0, result.output
        line = next(line for line in result.stdout.splitlines() if "member-0" in line)
        stored = run_folder.read_results(run)
        values = stored[stored["metric"] == "hessian/eigenvalue"].sort_values("rank")["value"].tolist()
        assert "3 largest eigenvalues " + ", ".join(f"{value:.4g}" for value in values) in line, (attempt, line)
