"""`sharpdiv quickstart --fast` end to end: digits-C, the sweep, the report, and reuse on a re-run;
the jobs and threads it chooses for the machine."""

import re
from pathlib import Path

import numpy as np
import pytest

from ensembles import cpus
from ensembles.data.corruptions import make_corrupted_split
from ensembles.data.datasets import load_corrupted, load_dataset
from ensembles.runs import run_folder
from ensembles.studies import quickstart, sweep
from ensembles.training import trainer

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def finished(fast_quickstart):
    return fast_quickstart  # tests/conftest.py: run once, its report is also opened in a browser


def _readme_quickstart() -> str:
    """README's quickstart section, with its line breaks folded into spaces."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## The quickstart\n", 1)[1].split("\n## ", 1)[0]
    return " ".join(section.split())


def _readme_fast_promise() -> dict:
    """The parenthesis after "`--fast` is the test suite's miniature", item by item."""
    found = re.search(r"`--fast` is the test suite's miniature \(([^)]*)\)", _readme_quickstart())
    assert found, "README.md no longer says what --fast runs"
    patterns = {"radii": r"(\d+) radii", "members": r"(\d+) members", "epochs": r"(\d+) epochs",
                "td": r"T_d = (\d+)", "train_samples": r"the first (\d+) training images",
                "corruptions": r"(\d+) corruptions", "budgets": r"small measurement budgets"}
    promise = {}
    for item in found.group(1).split(", "):
        matches = [(key, re.fullmatch(pattern, item)) for key, pattern in patterns.items()]
        key, match = next(((k, m) for k, m in matches if m), (None, None))
        assert match, f"README's --fast promises {item!r}, which this test does not check yet"
        promise[key] = int(match.group(1)) if match.groups() else True
    return promise


def test_fast_quickstart_runs_what_the_readme_promises(finished):
    """The README's --fast recipe against the run folders and digits-C that `quickstart --fast` wrote."""
    out, result = finished
    assert result.exit_code == 0, result.output + str(result.exception)
    promise = _readme_fast_promise()
    configs = [run_folder.read_config(path) for path in sorted((out / "runs").iterdir()) if (path / "run.json").is_file()]
    methods = sorted(config["method"] for config in configs)
    assert methods == ["sam"] * promise["radii"] + ["sgd", "sharpbalance"]
    assert len({config["rho"] for config in configs if config["method"] == "sam"}) == promise["radii"]
    for config in configs:
        assert (config["dataset"], config["model"]) == ("digits", "small_cnn")
        assert len(config["seeds"]) == len(config["members"]) == promise["members"]
        assert config["epochs"] == promise["epochs"]
        assert config["train_samples"] == promise["train_samples"]
    assert [config["td"] for config in configs if config["method"] == "sharpbalance"] == [promise["td"]]
    written = sorted(path.stem for path in (out / "data" / "digits-C").glob("*.npy") if path.stem != "labels")
    assert len(written) == promise["corruptions"]
    for path in sorted((out / "runs").iterdir()):
        if (path / "run.json").is_file():
            assert trainer.read_training_log(path)["epoch"].max() == promise["epochs"]
            table = run_folder.read_results(path, current_only=True)
            assert sorted(table["corruption"].dropna().unique()) == written


NUMBER_WORDS = {"three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}


def _readme_full_recipe() -> dict:
    """What the README's numbered list says the full quickstart does."""
    text = _readme_quickstart()
    found = {key: re.search(pattern, text) for key, pattern in {
        "data": r"On scikit-learn's bundled (\w+)",
        "corrupt": r"\*\*digits-C\*\*, .*?\((\d+) corruptions × (\d+) severities\)",
        "train": r"trains (\w+) (\d+)-member ensembles of a small CNN \(`(\w+)`, width (\d+), (\d+) epochs, "
                 r"batches of (\d+), augmentation `([\w-]+)`",
        "methods": r"SGD \(a deep ensemble\), SAM at ρ = ([\d., and]+?), and SharpBalance "
                   r"\(ρ = ([\d.]+), k = ([\d.]+), T_d = (\d+)\)",
        "measure": r"measures each member's adaptive worst-case ℓ2 sharpness \(ρ = ([\d., and]+?); the report "
                   r"uses ρ = ([\d.]+)\) and Hessian trace",
    }.items()}
    missing = [key for key, match in found.items() if match is None]
    assert not missing, f"README's quickstart list no longer reads as this test expects: {missing}"
    ensembles, members, model, width, epochs, batch, augmentation = found["train"].groups()
    sam_rhos, balance_rho, k, td = found["methods"].groups()
    return dict(dataset=found["data"].group(1), corruptions=int(found["corrupt"].group(1)),
                severities=int(found["corrupt"].group(2)), ensembles=NUMBER_WORDS[ensembles],
                members=int(members), model=model, width=int(width), epochs=int(epochs), batch_size=int(batch),
                augmentation=augmentation,
                sam_rhos=sorted(float(r) for r in re.split(r",\s*|\s+and\s+", sam_rhos)),
                sharpbalance=(float(balance_rho), float(k), int(td)),
                sharpness_rhos=tuple(float(r) for r in re.split(r",\s*|\s+and\s+", found["measure"].group(1))),
                report_rho=float(found["measure"].group(2)))


def test_full_quickstart_runs_what_the_readme_describes(tmp_path, monkeypatch):
    """The README's full recipe against what run_quickstart hands to digits-C and to the sweep."""
    import ensembles.data.corruptions

    seen = {}

    def write_corrupted_dataset(name, root, out, corruptions, **options):
        seen["data"], seen["corruptions"] = name, tuple(corruptions)
        return out, list(corruptions), []

    def run_sweep(plan, root, **options):
        seen["sweep"] = plan
        return sweep.SweepResult(outcomes=(), failures={}, job_ids={}, waited=True)

    monkeypatch.setattr(ensembles.data.corruptions, "write_corrupted_dataset", write_corrupted_dataset)
    monkeypatch.setattr(quickstart, "run_sweep", run_sweep)
    quickstart.run_quickstart(tmp_path, fast=False, device="cpu")
    readme = _readme_full_recipe()

    assert seen["data"] == readme["dataset"] and len(seen["corruptions"]) == readme["corruptions"]
    jobs = [job.settings for job in seen["sweep"].jobs]
    assert len(jobs) == readme["ensembles"]
    for settings in jobs:
        assert settings.dataset == readme["dataset"] and settings.model == readme["model"]
        assert (len(settings.seeds), settings.width, settings.epochs, settings.batch_size, settings.augmentation) == (
            readme["members"], readme["width"], readme["epochs"], readme["batch_size"], readme["augmentation"])
    assert sorted(s.method for s in jobs) == ["sam"] * len(readme["sam_rhos"]) + ["sgd", "sharpbalance"]
    assert sorted(s.rho for s in jobs if s.method == "sam") == readme["sam_rhos"]
    assert [(s.rho, s.k, s.td) for s in jobs if s.method == "sharpbalance"] == [readme["sharpbalance"]]
    measures = {measure.command: dict(measure.options) for measure in seen["sweep"].measurements}
    sharpness = measures["sharpness"]
    assert (sharpness["kind"], sharpness["norm"], sharpness["adaptive"], tuple(sharpness["rhos"])) == (
        "worst", "l2", True, readme["sharpness_rhos"])
    assert seen["sweep"].report["sharpness"] == f"sharpness/worst/l2/adaptive@{readme['report_rho']:g}"
    assert measures["hessian"]["trace"] is True
    assert tuple(measures["evaluate"]["corruptions"]) == seen["corruptions"]
    assert tuple(measures["evaluate"]["severities"]) == tuple(range(1, readme["severities"] + 1))


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
                    make_corrupted_split(images, clean.targets.numpy(), list(recipe.corruptions), seed=0,
                                         parameters="digits-c"))
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


def test_the_quickstart_shares_out_what_the_helper_answers(monkeypatch):
    from ensembles.studies import quickstart

    monkeypatch.setattr(cpus, "usable_cpus", lambda: 3)
    assert quickstart.parallelism(None, None, "cpu", 10) == (3, 1)


# --- parallelism: chosen for the machine, never more busy threads than cores, same numbers ----------


# (jobs, threads) chosen for 5 jobs from what is given: given values are kept; jobs = the cores the
# given threads leave room for (at least 1, at most 5); threads = the cores each job gets (at least 1).
CHOSEN = {  # cores: {(jobs, threads) given: chosen}
    1: {(None, None): (1, 1), (None, 2): (1, 2), (2, None): (2, 1), (1, None): (1, 1), (3, 3): (3, 3)},
    2: {(None, None): (2, 1), (None, 2): (1, 2), (2, None): (2, 1), (1, None): (1, 2), (3, 3): (3, 3)},
    3: {(None, None): (3, 1), (None, 2): (1, 2), (2, None): (2, 1), (1, None): (1, 3), (3, 3): (3, 3)},
    8: {(None, None): (5, 1), (None, 2): (4, 2), (2, None): (2, 4), (1, None): (1, 8), (3, 3): (3, 3)},
}


@pytest.mark.parametrize("cores", sorted(CHOSEN))
def test_the_quickstart_runs_one_single_threaded_job_per_core(monkeypatch, cores):
    monkeypatch.setattr(cpus, "usable_cpus", lambda: cores)
    for (jobs, threads), chosen in CHOSEN[cores].items():
        assert quickstart.parallelism(jobs, threads, "cpu", 5) == chosen, (jobs, threads)
        if jobs is None or threads is None:  # what is chosen never oversubscribes the cores
            assert chosen[0] * chosen[1] <= max(cores, (jobs or 1) * (threads or 1))
    assert quickstart.parallelism(None, None, "cuda", 5) == (1, None)
