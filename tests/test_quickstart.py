"""`sharpdiv quickstart --fast` end to end: digits-C, the sweep, the report, and reuse on a re-run."""

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from ensembles.runs import run_folder
from ensembles.studies import quickstart, sweep
from ensembles.data.corruptions import make_corrupted_split
from ensembles.data.datasets import load_dataset, load_corrupted


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    result = CliRunner().invoke(cli.main, ["quickstart", "--fast", "--out", str(out), "--device", "cpu"])
    return out, result


def test_fast_recipe_is_the_promised_one():
    recipe = quickstart.RECIPES["fast"]
    plan = quickstart.quickstart_sweep(fast=True)
    methods = sorted(job.settings.method for job in plan.jobs)
    assert methods == ["sam", "sam", "sgd", "sharpbalance"]
    assert sorted(job.settings.rho for job in plan.jobs if job.settings.method == "sam") == list(recipe.rhos)
    assert len(recipe.rhos) == 2 and len(recipe.corruptions) == 3
    for job in plan.jobs:
        assert len(job.settings.seeds) == 2 and job.settings.epochs == 2
        assert job.settings.dataset == "digits" and job.settings.model == "small_cnn"
    assert next(job for job in plan.jobs if job.settings.method == "sharpbalance").settings.td == 1
    full = quickstart.quickstart_sweep(fast=False)
    assert sorted(job.settings.method for job in full.jobs).count("sam") == 3  # a fitted β needs 3
    assert all(len(job.settings.seeds) == 3 for job in full.jobs)


def test_quickstart_writes_the_report(finished):
    out, result = finished
    assert result.exit_code == 0, result.output + str(result.exception)
    report = out / "report"
    for name in ("index.html", "README.md", "figures/tradeoff-eir.png", "tables/summary.csv",
                 "tables/tradeoff-beta.csv", "tables/severity-ensemble.csv"):
        assert (report / name).is_file(), name
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == f"report: {report / 'index.html'}" and "smoke test" in lines[-1]
    summary = lines[-7:-2]  # the five-line summary
    assert summary[0].startswith("quickstart --fast: 4 ensembles")
    assert [line.split(":")[0].strip() for line in summary[1:4]] == ["sam", "sgd", "sharpbalance"]
    assert summary[4].startswith("β")
    index = (report / "index.html").read_text()
    assert "tradeoff-eir" in index


def test_digits_c_matches_the_corruption_functions(finished):
    """The written digits-C equals the corruption functions applied to the clean test images."""
    out, _ = finished
    recipe = quickstart.RECIPES["fast"]
    clean = load_dataset("digits", None, "test", normalize=False)
    images = (clean.batch(np.arange(len(clean))) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    expected = dict((name, array) for name, array, _ in
                    make_corrupted_split(images, clean.targets.numpy(), list(recipe.corruptions), seed=0))
    folder = out / "data" / "digits-C"
    for name in recipe.corruptions:
        np.testing.assert_array_equal(np.load(folder / f"{name}.npy"), expected[name])
    assert load_corrupted("digits", out / "data", recipe.corruptions[0], 5).num_classes == 10


def test_every_run_was_trained_measured_and_rerunning_reuses_everything(finished):
    out, _ = finished
    plan = quickstart.quickstart_sweep(fast=True)
    first = sweep.read_log(out / "runs")
    trained = [r["job"] for r in first if r["step"] == "train"]
    assert sorted(trained) == sorted(job.name for job in plan.jobs)
    assert all(r["action"] == "trained" for r in first if r["step"] == "train")
    for job in plan.jobs:
        config = run_folder.read_config(out / "runs" / job.name)
        assert run_folder.finished_members(config) == [0, 1]
        table = run_folder.read_results(out / "runs" / job.name, current_only=True)
        assert {"sharpness/worst/l2/adaptive", "hessian/trace", "der", "accuracy"} <= set(table["metric"])
        corrupted = table[(table["metric"] == "accuracy") & (table["scope"] == "ensemble")]
        assert set(corrupted["corruption"].dropna()) == set(quickstart.RECIPES["fast"].corruptions)
    weights = {p: p.read_bytes() for p in (out / "runs").glob("*/member-*.safetensors")}

    again = quickstart.run_quickstart(out, fast=True, device="cpu")
    assert not any(outcome.trained for outcome in again.sweep.outcomes)
    steps = [step for outcome in again.sweep.outcomes for step in outcome.steps]
    assert {step.action for step in steps} == {"kept", "reused"} and sum(s.computed for s in steps) == 0
    assert set(again.corruptions_kept) == set(quickstart.RECIPES["fast"].corruptions)
    assert {p: p.read_bytes() for p in weights} == weights
