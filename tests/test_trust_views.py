"""An honest interval for β at small n, the report views a researcher expects
(per corruption, ρ labels, bars from 0, Hessian trace, budgets), ``--group-by`` lists, globs holding
non-run files, and the rough edges of a first run."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import cli
import results_fixtures as fixtures
from ensembles.runs import run_folder
from reports.collect import collect, run_table
from reports.tables import beta_table, corruption_table
from reports.tradeoff import MIN_ENSEMBLES, fit_beta, fits_by_group

# ----------------------------------------------------------------------------------------------
# β's interval is valid at small n


def _coverage(n: int, fits: int = 2000, beta: float = 0.5, noise: float = 0.3) -> float:
    """How often the 95% interval of β holds the true exponent, over ``fits`` synthetic groups of
    ``n`` ensembles with Gaussian scatter about a power law (the model the t interval assumes)."""
    generator = np.random.default_rng(1000 + n)
    covered = 0
    for _ in range(fits):
        sharpness = np.exp(generator.uniform(np.log(0.1), np.log(3.0), n))
        diversity = 0.7 * sharpness ** beta * np.exp(generator.normal(0.0, noise, n))
        fit = fit_beta(sharpness, diversity)
        covered += fit.ci_low <= beta <= fit.ci_high
    return covered / fits


@pytest.mark.parametrize("n", [3, 5, 12])
def test_beta_interval_covers_the_true_slope_95_percent_of_the_time_even_at_small_n(n):
    # 2000 fits: the binomial standard error of a 95% rate is 0.0049; ±0.02 is four of them. The
    # percentile bootstrap this replaced covered about 68% at n = 3 and 90% at n = 5.
    assert abs(_coverage(n) - 0.95) <= 0.02


def test_beta_says_when_it_cannot_tell_a_slope_from_noise():
    sharpness = np.array([0.1, 0.3, 1.0])
    three = fit_beta(sharpness, 0.5 * sharpness ** 0.4 * np.array([1.0, 1.05, 0.97]))
    assert three.n < MIN_ENSEMBLES and "too few ensembles" in three.verdict
    # at n = 3 the t quantile is 12.7: the interval is honest about how little 3 points say
    assert three.ci_high - three.ci_low > 2 * 12 * three.stderr
    flat = fit_beta(np.geomspace(0.1, 1.0, 8), 0.5 * np.array([1.0, 1.2, 0.8, 1.1, 0.9, 1.15, 0.85, 1.0]))
    assert flat.ci_low < 0 < flat.ci_high and "contains 0" in flat.verdict
    steep = fit_beta(np.geomspace(0.1, 1.0, 8), np.geomspace(0.1, 1.0, 8) ** 0.7 * np.exp(0.01 * np.sin(np.arange(8))))
    assert steep.verdict == ""
    numbers, text, title = beta_table({"sam": three, "sgd": steep, "sb": "needs at least 3 ensembles, has 2"},
                                      "method", sharpness="s", diversity="d")
    assert "t interval" in title and f"fewer than {MIN_ENSEMBLES}" in title
    assert "too few ensembles" in text.loc["sam", "note"] and text.loc["sgd", "note"] == ""
    assert numbers.set_index("method").loc["sam", "stderr"] == pytest.approx(three.stderr)


def test_beta_fits_by_group_needs_no_bootstrap_settings():
    fits = fits_by_group([0.1, 0.2, 0.4, 1.0, 2.0, 3.0], [0.2, 0.3, 0.4, 1.0, 1.5, 1.0], ["a"] * 3 + ["b"] * 3)
    assert set(fits) == {"a", "b"} and all(fit.n == 3 for fit in fits.values())


# ----------------------------------------------------------------------------------------------
# report views


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    paths = fixtures.write_study(root)
    runs = run_table(paths)
    return root, paths, runs, collect(paths, runs)


def test_corruption_table_shows_each_corruption_at_each_severity(study):
    _, _, runs, results = study
    numbers, text, title = corruption_table(results, runs, group_by="method", metric="accuracy")
    # write_study: ensemble accuracy = 0.92 − 0.04·severity (− 0.01 on fog) + 0.01·r + the method's offset
    sgd = numbers[(numbers["method"] == "sgd")].set_index(["corruption", "severity"])
    assert sgd.loc[("contrast", "1"), "mean"] == pytest.approx(100 * (0.92 - 0.04 + 0.01))
    assert sgd.loc[("fog", "5"), "mean"] == pytest.approx(100 * (0.92 - 0.20 - 0.01 + 0.01))
    assert sgd.loc[("fog", "mean"), "mean"] == pytest.approx(100 * (0.92 - 0.12 - 0.01 + 0.01))
    assert sgd.loc[("fog", "3"), "std"] == pytest.approx(1.0) and (sgd["count"] == 3).all()
    assert list(text.columns) == ["corruption", "1", "2", "3", "4", "5", "mean"]
    assert text.loc["sgd"].set_index("corruption").loc["fog", "1"] == "88.00 ± 1.00"
    der, der_text, der_title = corruption_table(results, runs, group_by="method", metric="der")
    scale, beta = fixtures.STUDY_LAWS["sam"]
    expected = np.mean([scale * (0.25 * 2 ** r) ** beta for r in range(3)])
    assert der[(der["method"] == "sam") & (der["severity"] == "2")]["mean"].tolist() == [pytest.approx(expected)] * 2
    assert "DER" in der_title


def test_corruption_table_is_empty_without_corrupted_rows(tmp_path):
    run = fixtures.make_run(tmp_path / "clean", method="sgd")
    run_folder.append_results(run, fixtures.evaluation_rows([0.9, 0.8, 0.85], {"accuracy": 0.9}))
    runs = run_table([run])
    numbers, _, _ = corruption_table(collect([run], runs), runs)
    assert numbers.empty


def _texts(figure):
    return [text.get_text() for ax in figure.axes for text in ax.texts]


def test_tradeoff_labels_each_sam_point_with_its_radius_and_bars_start_at_zero(study, tmp_path):
    from reports import plots

    _, _, _, results = study
    figure = plots.plot_tradeoff(results, tmp_path, formats=("png",)).figures[0]
    labels = _texts(figure)
    # write_study: sam and sharpbalance runs r = 0, 1, 2 were trained at ρ = 0.05 (r + 1); sgd has no ρ
    assert sorted(labels) == sorted([f"ρ={0.05 * (r + 1):g}" for r in range(3)] * 2)
    legend = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert any("too few ensembles" in text for text in legend)  # 3 runs per method
    bars = plots.plot_method_comparison(results, tmp_path, formats=("png",)).figures[0]
    assert all(ax.get_ylim()[0] == 0 for ax in bars.axes if ax.patches)


def test_summary_shows_the_hessian_trace_and_a_note_when_budgets_differ(tmp_path):
    from reports.site import write_report
    from reports.tables import summary_table

    paths = []
    for index, n_batches in enumerate((100, 100, 50)):
        path = fixtures.make_run(tmp_path / f"sam-{index}", method="sam", rho=0.05)
        rows = fixtures.evaluation_rows([0.8, 0.82, 0.81], {"accuracy": 0.85, "der": 0.3, "eir": 0.1})
        rows += [{**row, "n_batches": n_batches} for row in fixtures.sharpness_rows([0.1, 0.2, 0.3])]
        rows += [{"scope": f"member-{i}", "metric": "hessian/trace", "value": 10.0 * (index + 1), "stderr": 0.5,
                  "dataset": "cifar10", "split": "train", "n_probes": 100, "method": "hutchinson", "seed": 0}
                 for i in range(3)]
        run_folder.append_results(path, rows)
        paths.append(path)
    runs = run_table(paths)
    summary = summary_table(collect(paths, runs), runs)
    assert summary.mean.loc["sam", "Hessian trace"] == pytest.approx(20.0)
    report = write_report(paths, tmp_path / "report", formats=("png",), diversity_on="test")
    mixed = [note for note in report.notes if "different settings" in note]
    assert len(mixed) == 1 and "n_batches 100 vs 50" in mixed[0] and "sharpness/worst/l2/adaptive@0.5" in mixed[0]


def test_density_figure_and_member_positions_on_the_plane(tmp_path):
    from reports import plots

    path = fixtures.make_run(tmp_path / "run", method="sgd")
    where = {"dataset": "cifar10", "split": "train", "n_iters": 20, "n_runs": 1, "grid": 5}
    rows = [{"scope": f"member-{i}", "metric": "hessian/density", "value": float(np.exp(-x * x)),
             "grid_index": k, "eigenvalue": x, **where} for i in range(3) for k, x in enumerate(np.linspace(-1, 3, 5))]
    rows += fixtures.plane_rows()
    rows += [{"scope": f"member-{i}", "metric": metric, "value": 0.5, "u": u, "v": v, "grid": 4,
              "dataset": "cifar10", "split": "test"}
             for i, (u, v) in enumerate([(0.0, 0.0), (1.0, 0.0), (0.4, 0.8)])
             for metric in ("plane/loss", "plane/accuracy")]
    run_folder.append_results(path, rows)
    results = collect([path])
    density = plots.plot_density(results, tmp_path, formats=("png",))
    assert density.reason is None and len(density.figures[0].axes[0].lines) == 3
    plane = plots.plot_plane(results, tmp_path, formats=("png",)).figures[0]
    assert sorted(_texts(plane)) == sorted(["m0", "m1", "m2"] * 2)
    assert plots.plot_density(collect([fixtures.make_run(tmp_path / "bare", method="sgd")]), tmp_path).reason


def _write_two_methods(root):
    paths = []
    for method, rho in (("sgd", None), ("sam", 0.05), ("sam", 0.1)):
        path = fixtures.make_run(root / f"{method}-{rho}", method=method, rho=rho)
        run_folder.append_results(path, fixtures.evaluation_rows([0.8, 0.82, 0.81], {"accuracy": 0.85, "der": 0.3}))
        paths.append(path)
    return paths


def test_report_groups_by_a_comma_list_of_fields(tmp_path):
    paths = _write_two_methods(tmp_path / "runs")
    result = CliRunner().invoke(cli.main, ["report", *map(str, paths), "--out", str(tmp_path / "out"),
                                           "--group-by", "method,rho"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "out" / "tables" / "summary.csv")
    assert set(summary["method,rho"]) == {"method=sgd rho=(unset)", "method=sam rho=0.05", "method=sam rho=0.1"}
    for path in paths:  # the report reads run folders; it never writes a group label into them
        assert "sweep_group" not in run_folder.read_config(path)


def test_report_of_a_glob_skips_entries_that_are_not_runs(tmp_path):
    root = tmp_path / "runs"
    paths = _write_two_methods(root)
    (root / "sweep-log.jsonl").write_text("{}\n")
    (root / "notes").mkdir()
    entries = sorted(str(entry) for entry in root.iterdir())  # what the shell makes of runs/*
    result = CliRunner().invoke(cli.main, ["report", *entries, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "sharpdiv: note: skipped" in result.stderr and "sweep-log.jsonl" in result.stderr
    assert len(pd.read_csv(tmp_path / "out" / "tables" / "runs.csv")) == len(paths)
    only_files = CliRunner().invoke(cli.main, ["report", str(root / "sweep-log.jsonl"), str(root / "notes"),
                                               "--out", str(tmp_path / "none")])
    assert only_files.exit_code == 2 and "none of the 2 paths" in only_files.stderr
    assert "Traceback" not in only_files.output


# ----------------------------------------------------------------------------------------------
# rough edges


def test_evaluate_finds_the_data_the_run_was_trained_on(tmp_path, monkeypatch):
    from disk_layouts import write_cifar10, write_cifar_c
    from ensembles.models.zoo import build

    root = tmp_path / "own-data"  # like a quickstart folder's data/, not the default root
    write_cifar10(root, n_train=20, n_test=8)
    write_cifar_c(root, corruptions=("fog",), n_per_severity=2)
    monkeypatch.chdir(tmp_path)  # whatever the default root is, it holds no data here
    monkeypatch.setenv("SHARPDIV_DATA", str(tmp_path / "empty"))
    run = tmp_path / "run"
    run_folder.create_run(run, dataset="cifar10", num_classes=10, model="mlp",
                          model_args={"input_size": 3 * 32 * 32, "hidden": []}, seeds=[0, 1], data_path=str(root))
    for index in range(2):
        run_folder.save_member(run, index, build("mlp", 10, input_size=3 * 32 * 32, hidden=[]))
    result = CliRunner().invoke(cli.main, ["evaluate", str(run), "--device", "cpu", "--severities", "1"])
    assert result.exit_code == 0, result.output
    rows = run_folder.read_results(run)
    assert set(rows["corruption"].dropna()) == {"fog"}
    # a recorded root that is gone falls back to the default, and says so
    from ensembles.studies import evaluation

    config = {"dataset": "cifar10", "data_path": str(tmp_path / "moved")}
    assert run_folder.data_root(config, None, None)[0] is None and "is gone" in run_folder.data_root(config, None, None)[1]
    assert run_folder.data_root(config, "/given", None) == ("/given", None)


def test_a_members_progress_bar_appears_when_that_member_starts(tmp_path, monkeypatch):
    from ensembles.training import trainer

    events = []
    original = trainer._progress_bar

    def recorded(member, settings, enabled):
        events.append(("bar", member.index))
        return original(member, settings, enabled)

    monkeypatch.setattr(trainer, "_progress_bar", recorded)
    settings = trainer.TrainingSettings(dataset="digits", model="small_cnn", width=4, method="sgd", seeds=(3, 5),
                                        epochs=2, lr=0.05, batch_size=32, train_samples=64)
    trainer.train(tmp_path / "run", settings, progress=False,
                  callback=lambda event: events.append(("epoch", event["member"])) if event["event"] == "epoch" else None)
    # member 1's bar (and its clock) starts after member 0 has trained, not before: its ETA is its own
    assert events == [("bar", 0), ("epoch", 0), ("epoch", 0), ("bar", 1), ("epoch", 1), ("epoch", 1)]


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


def test_theory_shows_progress(tmp_path):
    result = CliRunner().invoke(cli.main, ["theory", "--figure", "1b", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "figure 1b" in result.stderr and "point" in result.stderr


def test_a_library_warning_reads_as_a_note_not_as_an_error(tmp_path):
    from ensembles.models.zoo import build

    run = tmp_path / "run"
    model_args = {"input_size": 3 * 32 * 32, "hidden": [4]}
    run_folder.create_run(run, dataset="digits", num_classes=10, model="mlp", model_args=model_args, seeds=[0])
    run_folder.save_member(run, 0, build("mlp", 10, **model_args))
    # 3 Lanczos steps cannot reach the tolerance: the eigenvalue is stored, with a remark
    result = CliRunner().invoke(cli.main, ["hessian", str(run), "--eigenvalues", "1", "--lanczos-steps", "3",
                                           "--n-examples", "8", "--device", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "sharpdiv: note: Lanczos did not reach" in result.stderr
    assert "RuntimeWarning" not in result.stderr and ".py:" not in result.stderr
