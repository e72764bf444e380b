"""Paired comparisons of methods by seed set: the numbers equal scipy's paired t on hand-picked
pairs, the statistical unit follows whether a run is shared, and the report's section appears only
when two methods have runs on the same seed sets."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import results_fixtures as fixtures
from ensembles.runs import run_folder
from reports.collect import collect, run_table
from reports.paired_comparisons import ALL_PAIRS, BY_SEED_SET, Difference, paired_comparisons
from reports.site import write_report

SEED_SETS = ((13, 17, 27), (113, 117, 127), (43, 59, 223))
RADII = (0.05, 0.1)
SLICES = [(None, None)] + [(c, s) for c in ("fog", "contrast") for s in (1, 3)]


def _values(method, seeds_index, rho):
    """Made-up ensemble accuracy and EIR per slice, different for every run and slice."""
    generator = np.random.default_rng([sum(map(ord, method)), seeds_index, int(1000 * (rho or 0))])
    return {where: (0.80 + 0.1 * generator.random(), 0.02 + 0.05 * generator.random()) for where in SLICES}


def _run(root, method, seeds_index, rho=None, **settings):
    name = f"{method}-s{seeds_index}" + ("" if rho is None else f"-rho{rho}")
    path = fixtures.make_run(root / name, method=method, rho=rho, seeds=SEED_SETS[seeds_index], **settings)
    rows = []
    for (corruption, severity), (accuracy, eir) in _values(method, seeds_index, rho).items():
        rows += fixtures.evaluation_rows([accuracy - 0.01] * 3, {"accuracy": accuracy, "eir": eir},
                                         corruption=corruption, severity=severity)
    run_folder.append_results(path, rows)
    return path


def _study(root):
    paths = {}
    for s in range(len(SEED_SETS)):
        paths["sgd", s, None] = _run(root, "sgd", s)
        for rho in RADII:
            paths["sam", s, rho] = _run(root, "sam", s, rho)
            paths["sharpbalance", s, rho] = _run(root, "sharpbalance", s, rho)
    return paths


def _per_run(method, s, rho, quantity):
    """The quantity of one run worked out from the made-up values (OOD: mean over the corrupted slices)."""
    values = _values(method, s, rho)
    column = 0 if "accuracy" in quantity else 1
    scale = 100 if "accuracy" in quantity else 1
    if "ID" in quantity:
        return scale * values[None, None][column]
    return scale * float(np.mean([values[where][column] for where in SLICES[1:]]))


def _comparisons(paths):
    runs = run_table(list(paths.values()))
    return paired_comparisons(collect(runs["path"], runs), runs)


def _row(numbers, comparison, quantity, over):
    chosen = numbers[(numbers["comparison"] == comparison) & (numbers["quantity"] == quantity) & (numbers["over"] == over)]
    assert len(chosen) == 1, (comparison, quantity, over, numbers)
    return chosen.iloc[0]


@pytest.mark.parametrize("quantity", ["ensemble accuracy OOD (%)", "EIR OOD", "EIR ID", "ensemble accuracy ID (%)"])
def test_sharpbalance_minus_sam_is_scipys_paired_t_over_pairs_per_rho_and_by_seed_set(tmp_path, quantity):
    numbers = _comparisons(_study(tmp_path)).numbers
    later = {(s, rho): _per_run("sharpbalance", s, rho, quantity) for s in range(3) for rho in RADII}
    earlier = {(s, rho): _per_run("sam", s, rho, quantity) for s in range(3) for rho in RADII}
    keys = sorted(later)
    # over all pairs: n = radii x seed sets, each run in one pair
    reference = stats.ttest_rel([later[k] for k in keys], [earlier[k] for k in keys])
    row = _row(numbers, "sharpbalance − sam", quantity, ALL_PAIRS)
    low, high = reference.confidence_interval(0.95)
    assert row["n"] == 6 and row["unit"] == "pair"
    assert (row["mean_difference"], row["ci_low"], row["ci_high"], row["p"]) == pytest.approx(
        (np.mean([later[k] - earlier[k] for k in keys]), low, high, reference.pvalue), rel=1e-9)
    # per ρ: n = seed sets
    for rho in RADII:
        chosen = [(s, rho) for s in range(3)]
        reference = stats.ttest_rel([later[k] for k in chosen], [earlier[k] for k in chosen])
        row = _row(numbers, "sharpbalance − sam", quantity, f"rho={rho:g}")
        assert row["n"] == 3 and row["unit"] == "seed set"
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(reference.confidence_interval(0.95), rel=1e-9)
    # by seed set: the mean over ρ of each seed set's differences, n = 3
    means = [np.mean([later[s, rho] - earlier[s, rho] for rho in RADII]) for s in range(3)]
    half = stats.t.ppf(0.975, 2) * np.std(means, ddof=1) / math.sqrt(3)
    row = _row(numbers, "sharpbalance − sam", quantity, BY_SEED_SET)
    assert row["n"] == 3
    assert (row["mean_difference"], row["ci_low"], row["ci_high"]) == pytest.approx(
        (np.mean(means), np.mean(means) - half, np.mean(means) + half), rel=1e-9)


@pytest.mark.parametrize("method", ["sharpbalance", "sam"])
def test_against_the_deep_ensemble_the_unit_is_the_seed_set(tmp_path, method):
    # The deep ensemble of a seed set is the partner at every ρ: no "all pairs" row (its pairs are
    # not independent), and the pooled row is over seed sets of the mean over ρ.
    numbers = _comparisons(_study(tmp_path)).numbers
    comparison = f"{method} − sgd"
    quantity = "ensemble accuracy OOD (%)"
    assert set(numbers.loc[numbers["comparison"] == comparison, "over"]) == {"rho=0.05", "rho=0.1", BY_SEED_SET}
    deep = [_per_run("sgd", s, None, quantity) for s in range(3)]
    for rho in RADII:
        reference = stats.ttest_rel([_per_run(method, s, rho, quantity) for s in range(3)], deep)
        row = _row(numbers, comparison, quantity, f"rho={rho:g}")
        assert (row["n"], row["ci_low"], row["ci_high"]) == pytest.approx((3, *reference.confidence_interval(0.95)))
    averaged = [np.mean([_per_run(method, s, rho, quantity) for rho in RADII]) for s in range(3)]
    reference = stats.ttest_rel(averaged, deep)
    row = _row(numbers, comparison, quantity, BY_SEED_SET)
    assert (row["n"], row["mean_difference"], row["ci_low"], row["ci_high"]) == pytest.approx(
        (3, np.mean(averaged) - np.mean(deep), *reference.confidence_interval(0.95)), rel=1e-9)


def test_verdict_names_the_higher_method_only_when_the_interval_excludes_zero():
    assert Difference.of([1.0, 1.2, 0.9]).verdict("sharpbalance", "sam") == "sharpbalance higher"
    assert Difference.of([-1.0, -1.2, -0.9]).verdict("sharpbalance", "sam") == "sam higher"
    assert "not told from 0" in Difference.of([1.0, -1.2, 0.3]).verdict("sharpbalance", "sam")
    assert Difference.of([0.4]).verdict("sharpbalance", "sam") == "n = 1: no interval"
    exact = Difference.of([0.5, 0.5, 0.5])  # no scatter: the interval is the point itself
    assert (exact.ci_low, exact.ci_high) == (0.5, 0.5) and exact.verdict("a", "b") == "a higher"


def test_runs_that_differ_in_a_setting_both_methods_use_are_not_paired(tmp_path):
    paths = {("sam", 0): _run(tmp_path, "sam", 0, 0.05, epochs=3),
             ("sharpbalance", 0): _run(tmp_path, "sharpbalance", 0, 0.05, epochs=4),
             ("sharpbalance", 1): _run(tmp_path, "sharpbalance", 0, 0.1, epochs=3)}  # another ρ
    assert _comparisons(paths).empty


def test_two_runs_on_one_seed_set_and_rho_make_the_comparison_ambiguous(tmp_path):
    paths = {"sam": _run(tmp_path, "sam", 0, 0.05), "sb": _run(tmp_path, "sharpbalance", 0, 0.05)}
    paths["copy"] = fixtures.make_run(tmp_path / "copy-of-sb", method="sharpbalance", rho=0.05, seeds=SEED_SETS[0])
    comparisons = _comparisons(paths)
    assert comparisons.empty
    assert any("sharpbalance − sam left out" in note and "copy-of-sb" in note for note in comparisons.notes)


def test_a_seed_set_missing_a_value_leaves_the_by_seed_set_row_and_says_so(tmp_path):
    paths = _study(tmp_path)
    missing = paths["sharpbalance", 2, 0.1]
    rows = run_folder.read_results(missing)
    # store a NaN OOD accuracy on one slice: that run's OOD mean is NaN, never a mean over the rest
    nan_row = rows[(rows["metric"] == "accuracy") & (rows["scope"] == "ensemble") & (rows["corruption"] == "fog")].iloc[:1]
    run_folder.append_results(missing, [{**{c: nan_row.iloc[0][c] for c in ("scope", "metric", "dataset", "split",
                                                                            "corruption", "severity", "combine")},
                                         "value": math.nan}])
    comparisons = _comparisons(paths)
    row = _row(comparisons.numbers, "sharpbalance − sam", "ensemble accuracy OOD (%)", BY_SEED_SET)
    assert row["n"] == 2
    assert _row(comparisons.numbers, "sharpbalance − sam", "ensemble accuracy OOD (%)", ALL_PAIRS)["n"] == 5
    assert any("seed sets 43,59,223 left out" in note for note in comparisons.notes)


def test_the_report_has_the_section_only_when_methods_share_seed_sets(tmp_path):
    paired = _study(tmp_path / "paired")
    report = write_report(list(paired.values()), tmp_path / "with", formats=("png",))
    table = tmp_path / "with" / "tables" / "paired-comparisons.md"
    assert table in report.tables and table.is_file()
    assert "Paired comparisons" in report.readme.read_text() and "Paired comparisons" in report.index.read_text()
    numbers = pd.read_csv(tmp_path / "with" / "tables" / "paired-comparisons.csv")
    assert set(numbers["comparison"]) == {"sam − sgd", "sharpbalance − sgd", "sharpbalance − sam"}
    pairs = pd.read_csv(tmp_path / "with" / "tables" / "paired-comparisons-pairs.csv")
    assert len(pairs[(pairs["comparison"] == "sharpbalance − sam") & (pairs["quantity"] == "EIR ID")]) == 6

    unpaired = [_run(tmp_path / "unpaired", "sgd", 0), _run(tmp_path / "unpaired", "sam", 1, 0.05),
                _run(tmp_path / "unpaired", "sharpbalance", 2, 0.05)]
    report = write_report(unpaired, tmp_path / "without", formats=("png",))
    assert not list((tmp_path / "without" / "tables").glob("paired-comparisons*"))
    assert "Paired comparisons" not in report.readme.read_text() + report.index.read_text()


def test_at_one_radius_the_pairs_are_the_seed_sets_one_row(tmp_path):
    paths = {(method, s): _run(tmp_path, method, s, 0.05) for method in ("sam", "sharpbalance") for s in range(3)}
    numbers = _comparisons(paths).numbers
    assert numbers["over"].unique().tolist() == [BY_SEED_SET]
    quantity = "EIR OOD"
    reference = stats.ttest_rel([_per_run("sharpbalance", s, 0.05, quantity) for s in range(3)],
                                [_per_run("sam", s, 0.05, quantity) for s in range(3)])
    row = _row(numbers, "sharpbalance − sam", quantity, BY_SEED_SET)
    assert (row["n"], row["ci_low"], row["ci_high"], row["p"]) == pytest.approx(
        (3, *reference.confidence_interval(0.95), reference.pvalue), rel=1e-9)


def test_differences_that_round_to_zero_show_no_minus_sign():
    from reports.paired_comparisons import _signed

    assert (_signed(-0.004, 2), _signed(-0.006, 2), _signed(0.5, 2), _signed(-1.23456, 4)) == \
        ("+0.00", "-0.01", "+0.50", "-1.2346")
