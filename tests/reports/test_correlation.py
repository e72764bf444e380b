"""Rank correlations between measures and generalization (reports/correlation.py)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pathlib import Path
import scipy.stats

from landscape.errors import InputError
from reports.correlation import kendall_tau_b, rank_correlations


@pytest.mark.parametrize("seed", range(6))
def test_tau_is_scipys_tau_b_with_and_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = 5 + 7 * seed
    x = rng.normal(size=n)
    y = x + rng.normal(size=n)
    tied_x, tied_y = rng.integers(0, 3, size=n).astype(float), np.round(y)  # many ties on both sides
    for a, b in ((x, y), (tied_x, y), (x, tied_y), (tied_x, tied_y)):
        assert kendall_tau_b(a, b) == pytest.approx(scipy.stats.kendalltau(a, b).statistic, abs=1e-12)
    table = rank_correlations(pd.DataFrame({"m": tied_x, "e": tied_y}), ["m"], ["e"], n_bootstrap=0)
    assert table.loc[0, "tau"] == pytest.approx(scipy.stats.kendalltau(tied_x, tied_y).statistic, abs=1e-12)


def test_tau_is_nan_when_a_side_is_constant_as_in_scipy():
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    assert math.isnan(scipy.stats.kendalltau([1, 1, 1], [1, 2, 3]).statistic)


# A hand-worked Simpson's paradox for ψ. Eight models k = 0..7 on a staircase over two axes:
#
#   k      0    1    2    3    4    5    6    7
#   lr     1    1    2    2    3    3    4    4
#   wd     1    2    2    3    3    4    4    5
#   m    1.2 -0.2  3.2  1.8  5.2  3.8  7.2  5.8    measure  m = k + 1.2·(−1)^k
#   e    0.8  4.2  2.8  6.2  4.8  8.2  6.8 10.2    target   e = k + 2 − 1.2·(−1)^k
#
# Models that differ in one axis only are exactly the neighbours (k, k+1): lr varies alone in
# {1,2}, {3,4}, {5,6} (wd = 2, 3, 4; wd = 1 and 5 hold one model each and are skipped), wd varies
# alone in {0,1}, {2,3}, {4,5}, {6,7}. For neighbours Δm = 1 ∓ 2.4 and Δe = 1 ± 2.4 have opposite
# signs: every such pair is discordant, so each group's τ is −1, ψ_lr = ψ_wd = −1 and ψ = −1.
# Pooled over all 28 pairs: the 7 neighbour pairs are discordant; pairs at distance d ≥ 2 have
# Δm = Δe = d (d even) or Δm, Δe = d ∓ 2.4 > 0 (d odd ≥ 3): all 21 concordant. No ties, so
# τ = (21 − 7) / 28 = +0.5: pooled, the measure "predicts" the target; within every one-axis
# change it ranks the models exactly backwards.
SIMPSON = pd.DataFrame({
    "lr": [1, 1, 2, 2, 3, 3, 4, 4],
    "wd": [1, 2, 2, 3, 3, 4, 4, 5],
    "m": [1.2, -0.2, 3.2, 1.8, 5.2, 3.8, 7.2, 5.8],
    "e": [0.8, 4.2, 2.8, 6.2, 4.8, 8.2, 6.8, 10.2],
})


def test_psi_and_pooled_tau_have_opposite_signs_in_a_simpsons_paradox():
    k = np.arange(8)
    assert np.allclose(SIMPSON["m"], k + 1.2 * (-1.0) ** k) and np.allclose(SIMPSON["e"], k + 2 - 1.2 * (-1.0) ** k)
    row = rank_correlations(SIMPSON, ["m"], ["e"], axes=["lr", "wd"], n_bootstrap=0).iloc[0]
    assert row["tau"] == pytest.approx(0.5)
    assert row["tau"] == pytest.approx(scipy.stats.kendalltau(SIMPSON["m"], SIMPSON["e"]).statistic)
    assert row["psi/lr"] == pytest.approx(-1.0)
    assert row["psi/wd"] == pytest.approx(-1.0)
    assert row["psi"] == pytest.approx(-1.0)
    assert row["psi_note"] == ""
    assert row["n"] == 8


def test_setting_correlations_give_each_measures_direction_along_each_setting_alone():
    from reports.correlation import setting_correlations

    # In SIMPSON, m = k + 1.2·(−1)^k: along lr alone (models 1→2, 3→4, 5→6, Δm = 1 + 2.4) m rises, along
    # wd alone (0→1, 2→3, 4→5, 6→7, Δm = 1 − 2.4) it falls; e = k + 2 − 1.2·(−1)^k the other way round.
    # A text axis has no order: left out.
    table = setting_correlations(SIMPSON.assign(method="sgd"), ["m", "e"], ["lr", "wd", "method"], n_bootstrap=200)
    by = table.set_index(["measure", "axis"])
    assert set(table["axis"]) == {"lr", "wd"}
    assert by.loc[("m", "lr"), "tau"] == 1.0 and by.loc[("m", "lr"), "groups"] == 3
    assert by.loc[("m", "wd"), "tau"] == -1.0 and by.loc[("m", "wd"), "groups"] == 4
    assert by.loc[("e", "lr"), "tau"] == -1.0 and by.loc[("e", "wd"), "tau"] == 1.0
    assert by.loc[("m", "lr"), "tau_low"] == by.loc[("m", "lr"), "tau_high"] == 1.0  # every group agrees


def test_setting_correlations_average_the_groups_and_match_scipy_inside_one():
    from reports.correlation import setting_correlations

    # two groups (b = 0, 1) along a; inside the first, m against a is scipy's τ; in the second, −1
    points = pd.DataFrame({"a": [1, 2, 3, 1, 2, 3], "b": [0, 0, 0, 1, 1, 1], "m": [0.3, 0.1, 0.2, 3.0, 2.0, 1.0]})
    row = setting_correlations(points, ["m"], ["a", "b"], n_bootstrap=0).set_index("axis").loc["a"]
    first = scipy.stats.kendalltau([0.3, 0.1, 0.2], [1, 2, 3]).statistic
    assert row["tau"] == pytest.approx((first - 1.0) / 2) and row["groups"] == 2
    assert np.isnan(row["tau_low"])  # no bootstrap asked


def test_psi_is_nan_with_a_reason_when_no_axis_varies_alone():
    # every two models differ in both axes: no group where one axis varies alone
    diagonal = pd.DataFrame({"lr": [1, 2, 3, 4, 5], "wd": [5, 4, 3, 2, 1], "m": [1, 2, 3, 4, 5.0],
                             "e": [1, 3, 2, 5, 4.0]})
    row = rank_correlations(diagonal, ["m"], ["e"], axes=["lr", "wd"], n_bootstrap=0).iloc[0]
    assert math.isnan(row["psi"]) and math.isnan(row["psi/lr"]) and math.isnan(row["psi/wd"])
    assert "no axis varies alone" in row["psi_note"]
    assert row["tau"] == pytest.approx(scipy.stats.kendalltau(diagonal["m"], diagonal["e"]).statistic)


def test_psi_leaves_out_an_axis_that_never_varies_alone_and_says_so():
    frame = SIMPSON.assign(batch=range(8))  # batch differs between every two models
    row = rank_correlations(frame, ["m"], ["e"], axes=["lr", "batch"], n_bootstrap=0).iloc[0]
    # grouping by batch leaves one model per group for lr; grouping by lr leaves pairs differing in batch
    assert math.isnan(row["psi/lr"])
    assert row["psi/batch"] == pytest.approx(-1.0)  # the pairs {0,1}, {2,3}, {4,5}, {6,7}
    assert row["psi"] == pytest.approx(-1.0) and "lr never varies alone" in row["psi_note"]


def test_models_missing_a_number_are_left_out_of_that_pair_and_counted():
    frame = SIMPSON.assign(m2=[np.nan, *SIMPSON["m"][1:]])
    table = rank_correlations(frame, ["m", "m2"], ["e"], n_bootstrap=0).set_index("measure")
    assert table.loc["m", "n"] == 8 and table.loc["m2", "n"] == 7
    assert table.loc["m2", "tau"] == pytest.approx(scipy.stats.kendalltau(SIMPSON["m"][1:], SIMPSON["e"][1:]).statistic)


def test_infinite_values_and_unknown_columns_are_refused():
    with pytest.raises(InputError, match="infinite"):
        rank_correlations(SIMPSON.assign(m=[np.inf, *SIMPSON["m"][1:]]), ["m"], ["e"])
    with pytest.raises(InputError, match="no column 'x'"):
        rank_correlations(SIMPSON, ["x"], ["e"])


def test_bootstrap_interval_is_reproducible_by_seed_and_brackets_tau():
    rng = np.random.default_rng(3)
    x = rng.normal(size=30)
    frame = pd.DataFrame({"m": x, "e": x + rng.normal(size=30), "f": rng.normal(size=30)})
    first = rank_correlations(frame, ["m"], ["e", "f"], n_bootstrap=300, seed=5)
    again = rank_correlations(frame, ["m"], ["e", "f"], n_bootstrap=300, seed=5)
    other = rank_correlations(frame, ["m"], ["e", "f"], n_bootstrap=300, seed=6)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["tau_low"], other["tau_low"])
    assert (first["tau_low"] <= first["tau"]).all() and (first["tau"] <= first["tau_high"]).all()


def test_bootstrap_intervals_cover_the_true_tau_at_about_the_nominal_rate():
    # Bivariate normal with correlation r: the population τ is (2/π)·arcsin(r) (Kendall 1938).
    # Stated rate: the 95% percentile interval, n = 40 models, covers it in 88–99% of 200 samples
    # (the percentile bootstrap under-covers slightly at this n; 200 draws give ±3% at 2 sd).
    r, n, repeats = 0.5, 40, 200
    true_tau = 2 / np.pi * np.arcsin(r)
    rng = np.random.default_rng(0)
    covered = 0
    for repeat in range(repeats):
        x = rng.normal(size=n)
        y = r * x + np.sqrt(1 - r ** 2) * rng.normal(size=n)
        row = rank_correlations(pd.DataFrame({"m": x, "e": y}), ["m"], ["e"], n_bootstrap=400, seed=repeat).iloc[0]
        covered += row["tau_low"] <= true_tau <= row["tau_high"]
    assert 0.88 <= covered / repeats <= 0.99


# ----------------------------------------------------------------------------------------------
# points from run folders, and the report's section

from click.testing import CliRunner  # noqa: E402

from ensembles.runs import run_folder  # noqa: E402
from reports.collect import collect, run_table  # noqa: E402
from reports.correlation import zoo_points  # noqa: E402
from results_fixtures import CORRUPTIONS, make_run, slice_columns  # noqa: E402

SEVERITY_DROP = 0.05


def _zoo_run(root, index, lr, weight_decay, sharpness, test_accuracy, train_accuracy, n_members=1):
    """A run folder of ``n_members`` untrained members with every row the correlation reads:
    accuracy, NLL and ECE on clean test, accuracy on train and on two corruptions at severities
    1 and 3, two sharpness definitions (two m of one metric) and the Hessian trace."""
    path = make_run(root / f"run-{index}", method="sgd", seeds=tuple(range(13, 13 + n_members)), lr=lr,
                    weight_decay=weight_decay)
    rows = []
    for member in range(n_members):
        scope = f"member-{member}"
        shift = 0.01 * member
        rows += [{"scope": scope, "metric": "accuracy", "value": test_accuracy - shift, **slice_columns()},
                 {"scope": scope, "metric": "nll", "value": 2 - test_accuracy, **slice_columns()},
                 {"scope": scope, "metric": "ece", "value": 0.1 * sharpness, "n_bins": 15, **slice_columns()},
                 {"scope": scope, "metric": "accuracy", "value": train_accuracy - shift,
                  **{**slice_columns(), "split": "train"}}]
        rows += [{"scope": scope, "metric": "accuracy", "value": test_accuracy - SEVERITY_DROP * severity - shift,
                  **slice_columns(corruption, severity)} for corruption in CORRUPTIONS for severity in (1, 3)]
        for m, scale in ((128, 1.0), (16, 2.0)):
            rows.append({"scope": scope, "metric": "sharpness/worst/l2/adaptive", "value": scale * sharpness + shift,
                         "dataset": "cifar10", "split": "train", "rho": 0.5, "m": m, "n_batches": 4, "seed": 13})
        rows.append({"scope": scope, "metric": "hessian/trace", "value": 10 * sharpness, "dataset": "cifar10",
                     "split": "train", "n_examples": 64, "n_probes": 4, "seed": 0})
    rows.append({"scope": "ensemble", "metric": "accuracy", "value": test_accuracy, "combine": "probs",
                 **slice_columns()})
    run_folder.append_results(path, rows)
    return path


def _zoo(root, n_members=1):
    grid = [(lr, wd) for lr in (0.1, 0.05, 0.01) for wd in (0.0, 5e-4)]
    return [_zoo_run(root, i, lr, wd, sharpness=1 + i, test_accuracy=0.9 - 0.02 * i - 0.01 * (wd > 0),
                     train_accuracy=0.99 - 0.005 * i, n_members=n_members)
            for i, (lr, wd) in enumerate(grid)]


def test_points_from_run_folders_hold_measures_targets_and_swept_axes(tmp_path):
    paths = _zoo(tmp_path, n_members=2)
    runs = run_table(paths)
    zoo = zoo_points(collect(paths, runs), runs)
    assert set(zoo.measures) == {"sharpness/worst/l2/adaptive@0.5 m=128", "sharpness/worst/l2/adaptive@0.5 m=16",
                                 "hessian/trace"}
    assert set(zoo.axes) == {"lr", "weight_decay"}  # seeds differ too, but are never an axis
    assert len(zoo.points) == 12 and set(zoo.points["member"]) == {0, 1}
    first = zoo.points[(zoo.points["path"] == str(paths[0])) & (zoo.points["member"] == 1)].iloc[0]
    assert first["test_error"] == pytest.approx(1 - 0.89)
    assert first["generalization_gap"] == pytest.approx((1 - 0.89) - (1 - 0.98))
    assert first["ood_error"] == pytest.approx(1 - (0.89 - SEVERITY_DROP * 2))  # mean over severities 1 and 3
    assert first["ood_error/s3"] == pytest.approx(1 - (0.89 - SEVERITY_DROP * 3))
    assert first["sharpness/worst/l2/adaptive@0.5 m=16"] == pytest.approx(2.01)
    assert first["lr"] == pytest.approx(0.1) and first["weight_decay"] == 0
    ensembles = zoo_points(collect(paths, runs), runs, of="ensembles")
    assert len(ensembles.points) == 6 and (ensembles.points["member"] == -1).all()
    assert ensembles.points.loc[0, "sharpness/worst/l2/adaptive@0.5 m=16"] == pytest.approx(2.005)
    assert ensembles.points.loc[0, "test_error"] == pytest.approx(0.1)


def test_report_writes_the_correlation_table_figure_and_section(tmp_path):
    from cli import main

    paths = _zoo(tmp_path / "runs")
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", *map(str, paths), "--out", str(out), "--group-by", "lr",
                                       "--correlate-with", "generalization_gap"])
    assert result.exit_code == 0, result.output
    for suffix in ("csv", "md", "tex"):
        assert (out / "tables" / f"correlation.{suffix}").is_file()
    assert (out / "figures" / "correlation-generalization_gap.png").is_file()
    table = pd.read_csv(out / "tables" / "correlation.csv")
    row = table[(table["measure"] == "hessian/trace") & (table["target"] == "test_error")].iloc[0]
    points = zoo_points(collect(paths), run_table(paths)).points
    assert row["tau"] == pytest.approx(scipy.stats.kendalltau(points["hessian/trace"], points["test_error"]).statistic)
    assert row["n"] == 6 and {"psi/lr", "psi/weight_decay"} <= set(table.columns)
    page = (out / "index.html").read_text()
    assert "Does sharpness predict generalization?" in page and "strongest rank correlation" in page
    assert "correlation-generalization_gap.png" in page
    moves = pd.read_csv(out / "tables" / "correlation-settings.csv")
    assert {"lr", "weight_decay"} <= set(moves["axis"]) and "τ with the setting" in page


def test_the_points_do_not_depend_on_the_order_or_the_folder_of_the_runs(tmp_path):
    # the bootstrap resamples points by position: the same runs in another order, or copied into
    # another folder (a study page's fixture), must give the same points in the same order
    import shutil

    paths = _zoo(tmp_path / "runs")
    moved = [Path(shutil.copytree(path, tmp_path / "elsewhere" / path.name)) for path in reversed(paths)]
    given = zoo_points(collect(paths), run_table(paths)).points
    other = zoo_points(collect(moved), run_table(moved)).points
    assert [Path(p).name for p in given["path"]] == [Path(p).name for p in other["path"]]
    pd.testing.assert_frame_equal(given.drop(columns="path"), other.drop(columns="path"))
    # two runs of one folder name in different folders: ordered by their whole paths, whatever the order given
    both = [paths[0], moved[-1]]
    assert zoo_points(collect(both), run_table(both)).points["path"].tolist() == \
        zoo_points(collect(both[::-1]), run_table(both[::-1])).points["path"].tolist()


def test_report_over_fewer_than_five_models_says_why_there_is_no_section(tmp_path):
    from cli import main

    paths = _zoo(tmp_path / "runs")[:4]
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", *map(str, paths), "--out", str(out), "--correlate-with", "test_error"])
    assert result.exit_code == 0, result.output
    assert "4 model(s)" in result.output and "fewer than 5" in result.output
    assert not (out / "tables" / "correlation.csv").exists()
    assert "Does sharpness predict generalization?" not in (out / "index.html").read_text()
    unasked = CliRunner().invoke(main, ["report", *map(str, paths), "--out", str(tmp_path / "unasked")])
    assert unasked.exit_code == 0 and "correlation" not in unasked.output  # no zoo, not asked: nothing to explain


def test_an_unknown_correlation_target_is_one_line_and_writes_nothing(tmp_path):
    from cli import main

    paths = _zoo(tmp_path / "runs")
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", *map(str, paths), "--out", str(out), "--correlate-with", "accuracy"])
    assert result.exit_code == 2 and "--correlate-with 'accuracy'" in result.output
    assert not out.exists()


def test_rows_of_the_reference_ascent_are_a_definition_of_their_own(tmp_path):
    from reports.correlation import _short, zoo_measures

    path = _zoo(tmp_path)[0]
    rows = [{"scope": "member-0", "metric": "sharpness/worst/l2/adaptive", "value": 9.0, "dataset": "cifar10",
             "split": "train", "rho": 0.5, "m": 128, "n_batches": 4, "seed": 13, "ascent": "reference"}]
    run_folder.append_results(path, rows)
    measures = zoo_measures(collect([path]))
    assert measures["sharpness/worst/l2/adaptive@0.5:reference m=128"]["value"].tolist() == [9.0]
    assert 9.0 not in measures["sharpness/worst/l2/adaptive@0.5 m=128"]["value"].tolist()
    assert _short("sharpness/worst/l2/adaptive@0.5:reference m=128") == "worst ℓ2 adaptive ρ=0.5 (reference ascent) m=128"


# ----------------------------------------------------------------------------------------------
# when the runs form a zoo, and ensemble-level rows over too few ensembles


def _runs(rows, n_members=3):
    """A run table (reports.collect.run_table's columns) of the given run.json settings."""
    table = pd.DataFrame([{f"run.{name}": value for name, value in row.items()} for row in rows])
    return table.assign(path=[f"r{i}" for i in range(len(rows))], **{"run.n_members": n_members})


QUICKSTART = [{"method": "sgd", "rho": 0.0}, {"method": "sam", "rho": 0.02}, {"method": "sam", "rho": 0.05},
              {"method": "sam", "rho": 0.1}, {"method": "sharpbalance", "rho": 0.05, "k": 0.4, "td": 6}]


def test_a_method_comparison_is_no_zoo_and_a_hyper_parameter_grid_is():
    from reports.correlation import forms_a_zoo, zoo_axes

    quickstart = _runs(QUICKSTART)  # 15 models, but only the method and its own settings vary
    assert zoo_axes(quickstart) == () and not forms_a_zoo(quickstart)
    assert not forms_a_zoo(quickstart, group_by="rho")  # grouped otherwise: still the methods' comparison
    width_study = _runs([{"method": "sam", "rho": rho, "width": width} for rho in (0.01, 0.1) for width in (8, 16)])
    assert zoo_axes(width_study, "width") == () and zoo_axes(width_study) == ("width",)
    grid = _runs([{"method": "sam", "rho": rho, "lr": lr, "batch_size": batch} for rho, lr, batch in
                  ((0.0, 0.1, 32), (0.0, 0.02, 64), (0.1, 0.1, 64), (0.1, 0.02, 32))], n_members=1)
    assert zoo_axes(grid, "lr") == ("batch_size",)
    assert not forms_a_zoo(grid, "lr")  # 4 models: too few to rank unasked
    eight = _runs([{"method": "sgd", "lr": 0.1 / (1 + i), "seeds": str(i)} for i in range(8)], n_members=1)
    assert forms_a_zoo(eight) and not forms_a_zoo(eight, group_by="lr") and not forms_a_zoo(eight.iloc[:7])
    single_basin = _runs([{"method": "sgd", "spawn_epoch": epoch} for epoch in (None, 0, 5)] * 3)
    assert forms_a_zoo(single_basin) and not forms_a_zoo(single_basin, group_by="construction")


@pytest.mark.parametrize("n_runs, shown", [(6, False), (8, True)])
def test_ensemble_level_rows_need_eight_ensembles(tmp_path, n_runs, shown):
    from reports.collect import collect, run_table
    from reports.correlation import MIN_RANKED, write_correlations

    grid = [(lr, wd) for wd in (0.0, 5e-4) for lr in (0.1, 0.05, 0.02, 0.01)][:n_runs]
    paths = [_zoo_run(tmp_path / "runs", i, lr, wd, sharpness=1 + i, test_accuracy=0.9 - 0.02 * i,
                      train_accuracy=0.99, n_members=2) for i, (lr, wd) in enumerate(grid)]
    runs = run_table(paths)
    section = write_correlations(collect(paths, runs), runs, tmp_path / "tables", tmp_path / "figures",
                                 n_bootstrap=50, formats=("png",))
    table = pd.read_csv(tmp_path / "tables" / "correlation.csv")
    assert set(table["points"]) == ({"members", "ensembles"} if shown else {"members"})
    assert (table.loc[table["points"] == "ensembles", "n"] >= MIN_RANKED).all()
    assert any("fewer than 8 ensembles left out" in note for note in section.notes) != shown
