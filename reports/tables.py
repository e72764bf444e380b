"""The tables researchers publish, from stored results: per-group summaries and accuracy by severity.

A run contributes one number per quantity (see :mod:`reports.collect` for how rows become that
number). Runs are grouped by a run.json field (``method``, ``rho``, ``width``, ``sparsity`` ...) and
each cell is the group's mean over runs, with the sample standard deviation (``ddof=1``; blank for a
single run) and the number of runs that have the quantity. Accuracies are shown in percent.

- :func:`summary_table` — ID and OOD accuracy of the members (mean over members) and of the
  ensemble, EIR, DER, prediction variance, KL, ECE and NLL of the ensemble on clean (ID) and
  corrupted (OOD) data, the members' mean sharpness and (when measured) mean Hessian trace;
- :func:`severity_table` — the layout of SharpBalance (NeurIPS 2024) Tables 2–4: rows are groups,
  columns are ID and severities 1..5 (accuracy averaged over the corruptions at that severity) and
  OOD (all corrupted slices), with each group's difference to a baseline group in brackets;
- :func:`corruption_table` — accuracy or DER of the ensemble per corruption at each severity, per
  group (what a mean over corruptions hides);
- :func:`beta_table` — the trade-off slope β per group (:mod:`reports.tradeoff`);
- :func:`quickstart_summary` — the few lines ``sharpdiv quickstart`` prints: per method the ensemble
  accuracy, DER and sharpness, then β per method.

:func:`write_table` writes any of them as CSV (the numbers, tidy: one row per group and quantity),
Markdown and LaTeX (the formatted cells).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ensembles.runs.files import atomic_path
from landscape.errors import InputError
from reports.collect import (COMPARABILITY_FIELDS, RUN_PREFIX, SharpnessSpec, barriers_per_run, collect,
                             group_labels, group_order, per_corruption, per_run, run_table, sharpness_per_run, tradeoff_points)
from reports.tradeoff import MIN_ENSEMBLES, BetaFit, fits_by_group

__all__ = ["GroupTable", "beta_table", "column_decimals", "connectivity_table", "corruption_table", "default_baseline",
           "fixed_decimals", "headline_table", "joined", "latex", "provenance_table", "markdown", "quickstart_summary", "severity_table",
           "summary_table", "t_interval", "write_group_table", "write_table"]

#: Significant digits of a column's largest value when every number of the column gets one decimal count.
SIGNIFICANT = 4


def column_decimals(values, percent: bool = False) -> int:
    """The decimals every number of a column gets so that the column reads alike: 2 for percentages,
    else enough for :data:`SIGNIFICANT` digits of its largest magnitude (``0.8064``, ``12.31``,
    ``0.01100`` beside ``0.00822``).

    >>> column_decimals([0.8064, 1.11]), column_decimals([0.011, 0.00822]), column_decimals([97.25], percent=True)
    (3, 5, 2)
    """
    if percent:
        return 2
    finite = np.abs(np.asarray(values, dtype=float))
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if not finite.size:
        return SIGNIFICANT - 1
    return max(0, SIGNIFICANT - 1 - math.floor(math.log10(finite.max())))


def fixed_decimals(numbers: pd.DataFrame) -> pd.DataFrame:
    """``numbers`` as text, each numeric column with one decimal count (:func:`column_decimals`);
    blank where a value is missing; other columns as they are."""
    text = numbers.copy().astype(object)
    for column in numbers.columns:
        if pd.api.types.is_numeric_dtype(numbers[column]) and not pd.api.types.is_bool_dtype(numbers[column]):
            decimals = column_decimals(numbers[column])
            text[column] = ["" if pd.isna(value) else f"{value:.{decimals}f}" for value in numbers[column]]
    return text


def t_interval(values) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of the finite values: ``mean ± t(0.975, n−1)·s/√n`` (no interval for
    n < 2)."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(values.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    half = float(stats.t.ppf(0.975, n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n


@dataclass(frozen=True)
class GroupTable:
    """Per-group statistics of per-run quantities.

    ``per_run`` has one row per run (index ``path``): ``group`` and one column per quantity.
    ``mean``, ``std`` and ``count`` are indexed by group (in :func:`reports.collect.group_order`)
    with the same quantity columns; ``runs`` counts the runs of each group. With a ``baseline``,
    ``difference`` is ``mean − mean of the baseline group``.
    """

    name: str
    title: str
    group_by: str
    per_run: pd.DataFrame
    mean: pd.DataFrame
    std: pd.DataFrame
    count: pd.DataFrame
    runs: pd.Series
    percent: tuple[str, ...] = ()
    baseline: str | None = None
    difference: pd.DataFrame | None = None

    def numbers(self) -> pd.DataFrame:
        """Tidy numbers: one row per (group, quantity) with mean, std, count (and difference)."""
        parts = {"mean": self.mean, "std": self.std, "count": self.count}
        if self.difference is not None:
            parts[f"difference_to_{self.baseline}"] = self.difference
        long = pd.concat({name: frame.stack(future_stack=True) for name, frame in parts.items()}, axis=1)
        long.index.names = [self.group_by, "quantity"]
        long = long.reset_index()
        long["count"] = long["count"].astype(int)
        return long

    def text(self, decimals: dict[str, int] | None = None) -> pd.DataFrame:
        """Formatted cells: ``mean ± std``, ``(+diff)`` against the baseline, ``[n=k]`` where fewer
        runs than the group has carry the quantity; ``—`` where none does. Numbers have 4 significant
        digits (2 decimals in percent), or the ``decimals`` given per quantity (:meth:`decimals`)."""
        cells = pd.DataFrame(index=self.mean.index, columns=self.mean.columns, dtype=object)
        for group in self.mean.index:
            for quantity in self.mean.columns:
                cells.loc[group, quantity] = self._cell(group, quantity, decimals)
        cells.insert(0, "runs", self.runs.reindex(self.mean.index).astype(int).astype(str))
        cells.index.name = self.group_by
        return cells

    def decimals(self) -> dict[str, int]:
        """One decimal count per quantity, so that a column reads alike (:func:`column_decimals`)."""
        return {quantity: column_decimals(self.mean[quantity], quantity in self.percent)
                for quantity in self.mean.columns}

    def _cell(self, group, quantity, decimals: dict[str, int] | None = None) -> str:
        count = int(self.count.loc[group, quantity])
        if count == 0:
            return "—"
        if decimals is not None:
            digits = (lambda x: f"{x:.{decimals[quantity]}f}")
        else:
            digits = (lambda x: f"{x:.2f}") if quantity in self.percent else (lambda x: f"{x:.4g}")
        text = digits(self.mean.loc[group, quantity])
        spread = self.std.loc[group, quantity]
        if np.isfinite(spread):
            text += f" ± {digits(spread)}"
        if self.difference is not None and group != self.baseline:
            change = self.difference.loc[group, quantity]
            if np.isfinite(change):
                text += f" ({'+' if change >= 0 else '−'}{digits(abs(change))})"
        if count < int(self.runs.get(group, count)):
            text += f" [n={count}]"
        return text


def _group_statistics(name: str, title: str, group_by: str, values: pd.DataFrame, groups: pd.Series,
                      percent=(), baseline: str | None = None, data: pd.Series | None = None) -> GroupTable:
    """Mean, sample std and count over the runs of each group; drop quantities no run has.
    ``data`` (per run, like ``groups``) says which data a run is on: a group on other data than the
    baseline gets no difference, since accuracies on different data do not compare."""
    values = values.reindex(groups.index).dropna(axis=1, how="all")
    order = group_order(groups)
    grouped = values.groupby(groups)
    mean = grouped.mean().reindex(order)
    std = grouped.std(ddof=1).reindex(order)
    count = grouped.count().reindex(order).fillna(0).astype(int)
    runs = groups.value_counts().reindex(order)
    difference = None
    if baseline is not None:
        if baseline not in order:
            raise InputError(f"--baseline {baseline!r} is not a {group_by} of these runs; "
                             f"choose one of: {', '.join(order)}")
        difference = mean - mean.loc[baseline]
        if data is not None:
            data_of_group = data.reindex(groups.index).groupby(groups).agg(lambda keys: frozenset(keys))
            other = [group for group in order if data_of_group.get(group) != data_of_group.get(baseline)]
            difference.loc[other] = np.nan
    per_run_table = pd.concat([groups.rename("group"), values], axis=1)
    per_run_table.index.name = "path"
    return GroupTable(name=name, title=title, group_by=group_by, per_run=per_run_table, mean=mean, std=std,
                      count=count, runs=runs, percent=tuple(c for c in mean.columns if c in percent),
                      baseline=baseline, difference=difference)


def _groups(results: pd.DataFrame, runs: pd.DataFrame | None, group_by: str) -> pd.Series:
    return group_labels(_run_frame(results, runs), group_by)


def _run_frame(results: pd.DataFrame, runs: pd.DataFrame | None) -> pd.DataFrame:
    return runs.set_index("path") if runs is not None else results.drop_duplicates("path").set_index("path")


def _data_of_runs(results: pd.DataFrame, runs: pd.DataFrame | None) -> pd.Series:
    """Per run, the run.json fields that make numbers comparable (dataset, number of classes) as one key."""
    frame = _run_frame(results, runs)
    columns = [RUN_PREFIX + field for field in COMPARABILITY_FIELDS if RUN_PREFIX + field in frame.columns]
    if not columns:
        return pd.Series("", index=frame.index)
    return frame[columns].astype(str).agg("|".join, axis=1)


def summary_table(results: pd.DataFrame, runs: pd.DataFrame | None = None, *, group_by: str = "method",
                  sharpness: SharpnessSpec | str = "sharpness/worst/l2/adaptive@0.5",
                  combine: str | None = "probs", name: str = "summary") -> GroupTable:
    """Per-group means over runs of the headline quantities (SharpBalance Fig. 7 and §4 in numbers).

    Quantities (columns; any that no run has are left out): member and ensemble accuracy (%) on
    clean test data (ID) and on corrupted data (OOD, mean over corruption × severity slices); EIR,
    DER, prediction variance (logits), KL, ECE and NLL of the ensemble on ID and OOD; the members'
    mean sharpness. ``runs`` (from :func:`reports.collect.run_table`) lets runs without any row
    count in their group.
    """
    spec = sharpness if isinstance(sharpness, SharpnessSpec) else SharpnessSpec.parse(sharpness)
    groups = _groups(results, runs, group_by)
    columns = {}
    for on, where in (("test", "ID"), ("ood", "OOD")):
        columns[f"member accuracy {where} (%)"] = 100 * per_run(results, "accuracy", scope="members", on=on,
                                                                 combine=combine)
        columns[f"ensemble accuracy {where} (%)"] = 100 * per_run(results, "accuracy", on=on, combine=combine)
    for metric, label in (("eir", "EIR"), ("der", "DER"), ("variance/logits", "variance"), ("kl", "KL"),
                          ("ece", "ECE"), ("nll", "NLL")):
        for on, where in (("test", "ID"), ("ood", "OOD")):
            columns[f"{label} {where}"] = per_run(results, metric, on=on, combine=combine)
    columns[f"sharpness {spec}"] = sharpness_per_run(results, spec)
    if spec.metric != "hessian/trace":  # the curvature `sharpdiv hessian` measured, shown when stored
        columns["Hessian trace"] = sharpness_per_run(results, SharpnessSpec("hessian/trace", None))
    values = pd.DataFrame(columns, index=groups.index)
    percent = [c for c in columns if c.endswith("(%)")]
    title = (f"Summary by {group_by}: mean ± std over runs (ensemble rows with combine={combine}; "
             "ID = clean test data, OOD = mean over corrupted slices; accuracies in %)")
    return _group_statistics(name, title, group_by, values, groups, percent=percent)


#: The summary's quantities the report leads with (SharpBalance, Fig. 7 and Tables 2–4), then the sharpness.
HEADLINE = ("member accuracy ID (%)", "ensemble accuracy ID (%)", "member accuracy OOD (%)", "ensemble accuracy OOD (%)",
            "DER ID", "DER OOD", "EIR ID", "EIR OOD")


def headline_table(summary: GroupTable, sharpness: SharpnessSpec | str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The headline quantities of ``summary`` per group as the mean over runs with its 95% t interval:
    ``(numbers, cells, title)``. ``numbers`` is tidy (group, quantity, mean, ci_low, ci_high, n);
    ``cells`` holds ``(mean, "[low, high]")`` text pairs (one decimal count per column; no interval
    from one run, ``[n=k]`` where fewer runs than the group has carry the quantity, ``("—", "")``
    where none does), with the group's run count first; :func:`joined` makes them one text."""
    quantities = [q for q in (*HEADLINE, f"sharpness {sharpness}") if q in summary.mean.columns]
    cells = pd.DataFrame(index=summary.mean.index, columns=["runs", *quantities], dtype=object)
    rows = []
    for group in summary.mean.index:
        runs = int(summary.runs.get(group, 0))
        cells.at[group, "runs"] = (str(runs), "")
        mine = summary.per_run[summary.per_run["group"] == group]
        for quantity in quantities:
            mean, low, high, n = t_interval(mine[quantity].astype(float))
            rows.append({summary.group_by: group, "quantity": quantity, "mean": mean, "ci_low": low,
                         "ci_high": high, "n": n})
            d = column_decimals(summary.mean[quantity], quantity in summary.percent)
            interval = f"[{low:.{d}f}, {high:.{d}f}]" if n > 1 else ""
            if 0 < n < runs:
                interval = f"{interval} [n={n}]".strip()
            cells.at[group, quantity] = ("—", "") if n == 0 else (f"{mean:.{d}f}", interval)
    cells = cells.rename(columns={f"sharpness {sharpness}": "sharpness"})  # the title says which
    cells.index.name = summary.group_by
    title = (f"Summary by {summary.group_by}: mean over runs [95% t interval, mean ± t(0.975, n−1)·s/√n]; "
             f"ID = clean test data, OOD = mean over corrupted slices; accuracies in %; members' mean sharpness "
             f"{sharpness}")
    return pd.DataFrame(rows, columns=[summary.group_by, "quantity", "mean", "ci_low", "ci_high", "n"]), cells, title


def joined(cells: pd.DataFrame) -> pd.DataFrame:
    """Text pairs of :func:`headline_table` as one text per cell (``97.25 [96.51, 97.99]``)."""
    return cells.map(lambda pair: " ".join(part for part in pair if part))


def connectivity_table(results: pd.DataFrame, runs: pd.DataFrame, *,
                       combine: str | None = "probs") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Per run with barrier rows: the mean pairwise loss barrier without and with each stored
    alignment (members permuted to match member 0) next to the ensemble's DER and EIR on clean test
    data — whether the ensemble's gain comes from members in different basins (Lion et al., "How
    good is a single basin?"). Returns ``(numbers, text, title)``; empty when no run has barriers.
    """
    barriers = barriers_per_run(results)
    labels = runs.set_index("path")["run_label"]
    numbers = pd.DataFrame({"run": labels.reindex(barriers.index)}, index=barriers.index)
    for kind in barriers.columns:
        numbers[f"mean barrier, {'no alignment' if kind == 'none' else kind + ' alignment'}"] = barriers[kind]
    for metric, label in (("der", "DER ID"), ("eir", "EIR ID")):
        numbers[label] = per_run(results, metric, on="test", combine=combine).reindex(barriers.index)
    numbers = numbers.reset_index(drop=True)
    text = numbers.copy()
    for column in text.columns[1:]:
        text[column] = [("" if pd.isna(value) else f"{value:.4g}") for value in numbers[column]]
    title = ("Connectivity and ensemble gain per run: mean loss barrier over member pairs before and after "
             "aligning every member to member 0, next to DER and EIR on clean test data")
    return numbers, text.set_index("run"), title


def severity_table(results: pd.DataFrame, runs: pd.DataFrame | None = None, *, group_by: str = "method",
                   baseline: str | None = None, of: str = "ensemble", combine: str | None = "probs",
                   name: str | None = None) -> GroupTable:
    """Accuracy (%) by corruption severity, the layout of SharpBalance Tables 2–4.

    Columns: ``ID`` (clean test data), ``1``..``5`` (mean over the corruptions at that severity) and
    ``OOD`` (mean over every corrupted slice). ``of`` is ``ensemble`` or ``members`` (the mean over
    members). Cells carry the difference of group means to the ``baseline`` group; by default
    that is :func:`default_baseline`.
    """
    if of not in ("ensemble", "members"):
        raise InputError(f"severity table of {of!r}: use ensemble or members")
    groups = _groups(results, runs, group_by)
    by_severity = per_run(results, "accuracy", scope=of, on="ood", combine=combine, by_severity=True)
    values = pd.DataFrame({"ID": per_run(results, "accuracy", scope=of, on="test", combine=combine)},
                          index=groups.index)
    for severity in by_severity.columns:
        values[str(severity)] = by_severity[severity]
    values["OOD"] = per_run(results, "accuracy", scope=of, on="ood", combine=combine)
    values = 100 * values
    if baseline is None:
        baseline = default_baseline(values, groups)
    who = "ensemble" if of == "ensemble" else "mean member"
    title = f"{who.capitalize()} accuracy (%) by corruption severity, by {group_by}: mean ± std over runs"
    data = _data_of_runs(results, runs)
    if baseline is not None:
        title += f"; in brackets the difference to {group_by} = {baseline}"
        if data.nunique() > 1:
            title += " (for groups on the same data only)"
    return _group_statistics(name or f"severity-{of}", title, group_by, values, groups,
                             percent=list(values.columns), baseline=baseline, data=data)


#: What the per-corruption tables and figures show: metric, label, whether in percent.
CORRUPTION_QUANTITIES = (("accuracy", "ensemble accuracy (%)", True), ("der", "DER", False))


def corruption_table(results: pd.DataFrame, runs: pd.DataFrame | None = None, *, group_by: str = "method",
                     metric: str = "accuracy", combine: str | None = "probs", name: str | None = None,
                     same_decimals: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The ensemble's ``metric`` per corruption at each severity, per group: ``(numbers, text, title)``.

    A mean over corruptions hides a corruption that destroys the task at every severity (or one
    that does nothing); this table shows each. Rows are (group, corruption), columns the severities
    and ``mean`` (over that corruption's severities); cells are the mean ± std over the group's runs,
    with ``[n=k]`` where fewer runs than the group has carry the slice. ``numbers`` is tidy: one row
    per group, corruption and severity with ``mean``, ``std`` and ``count``. Empty when no run has
    corrupted-data rows of ``metric``. Numbers have 4 significant digits (2 decimals in percent), or
    with ``same_decimals`` one decimal count for the whole table (:func:`column_decimals`).
    """
    label, percent = next(((text, pct) for m, text, pct in CORRUPTION_QUANTITIES if m == metric), (metric, False))
    groups = _groups(results, runs, group_by)
    values = per_corruption(results, metric, scope="ensemble", combine=combine)
    title = (f"{label[0].upper() + label[1:]} per corruption and severity, by {group_by}: mean ± std over runs "
             f"(ensemble rows with combine={combine})")
    columns = [group_by, "corruption", "severity", "mean", "std", "count"]
    if values.empty:
        return pd.DataFrame(columns=columns), pd.DataFrame(), title
    scale = 100 if percent else 1
    values = values.assign(group=groups.reindex(values["path"]).to_numpy(), value=scale * values["value"].astype(float))
    with_mean = pd.concat([values, _means_over_severities(values)], ignore_index=True)
    stats_ = with_mean.groupby(["group", "corruption", "severity"], sort=False)["value"].agg(
        mean="mean", std=lambda v: v.std(ddof=1), count="count").reset_index()
    order = {group: index for index, group in enumerate(group_order(groups))}
    stats_["_order"] = stats_["group"].map(order)
    stats_["_severity"] = stats_["severity"].map(lambda v: 99 if v == "mean" else int(v))
    stats_ = stats_.sort_values(["_order", "corruption", "_severity"]).drop(columns=["_order", "_severity"])
    runs_of_group = groups.value_counts()
    digits = (lambda x: f"{x:.2f}") if percent else (lambda x: f"{x:.4g}")
    if same_decimals:
        decimals = column_decimals(stats_["mean"], percent)
        digits = (lambda x: f"{x:.{decimals}f}")

    def cell(row) -> str:
        if row["count"] == 0 or not np.isfinite(row["mean"]):
            return "—"
        text = digits(row["mean"]) + (f" ± {digits(row['std'])}" if np.isfinite(row["std"]) else "")
        return text + (f" [n={int(row['count'])}]" if row["count"] < runs_of_group.get(row["group"], 0) else "")

    shown = stats_.assign(cell=stats_.apply(cell, axis=1), severity=stats_["severity"].astype(str))
    text = shown.pivot_table(index=["group", "corruption"], columns="severity", values="cell", aggfunc="first",
                             sort=False)
    text = text[[c for c in text.columns if c != "mean"] + ["mean"]].reset_index(level="corruption")
    text.index.name = group_by
    text.columns.name = None
    numbers = stats_.rename(columns={"group": group_by}).assign(severity=stats_["severity"].astype(str))
    return numbers[columns].reset_index(drop=True), text, title


def _means_over_severities(values: pd.DataFrame) -> pd.DataFrame:
    """Each run's mean over a corruption's severities (``severity="mean"``), NaN when the run lacks
    one of the severities the table shows for that corruption: a mean over a subset of them is
    another number, and would pass for this one silently."""
    shown = values.groupby("corruption")["severity"].agg(lambda s: set(s))

    def mean(rows: pd.DataFrame) -> float:
        complete = set(rows["severity"]) >= shown[rows.name[2]]
        return rows["value"].mean(skipna=False) if complete else math.nan

    means = values.groupby(["path", "group", "corruption"])[["severity", "value"]].apply(mean)
    return means.rename("value").reset_index().assign(severity="mean")


def default_baseline(values: pd.DataFrame, groups: pd.Series) -> str | None:
    """The group the others are compared with when none is named: ``sgd`` (the plain ensemble the
    paper compares against) when it has a value, else the first group in reading order that has
    one; a group without any value (runs not evaluated yet) would make every difference blank.
    ``None`` when no group has data."""
    measured = values.reindex(groups.index).notna().any(axis=1)
    with_data = [group for group in group_order(groups) if measured[groups == group].any()]
    plain = [group for group in with_data if group == "sgd" or group.startswith("sgd (")]  # "sgd (cifar10)"
    if plain:
        return plain[0]
    return with_data[0] if with_data else None


def beta_table(fits: dict[str, BetaFit | str], group_by: str, *, sharpness: str, diversity: str,
               name: str = "tradeoff-beta") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The β of each group as (numbers, formatted text, title); a group that could not be fitted
    has NaNs and its reason; a β not told from noise (too few ensembles, interval spans 0) says so."""
    rows, text = [], []
    for group, fit in fits.items():
        if isinstance(fit, BetaFit):
            rows.append({group_by: group, "beta": fit.beta, "ci_low": fit.ci_low, "ci_high": fit.ci_high,
                         "stderr": fit.stderr, "r2": fit.r2, "n": fit.n, "note": fit.verdict})
            text.append({group_by: group, "β": f"{fit.beta:.3f}", "95% interval": f"[{fit.ci_low:.3f}, {fit.ci_high:.3f}]",
                         "R²": f"{fit.r2:.3f}", "ensembles": str(fit.n), "note": fit.verdict})
        else:
            rows.append({group_by: group, "beta": math.nan, "ci_low": math.nan, "ci_high": math.nan,
                         "stderr": math.nan, "r2": math.nan, "n": 0, "note": fit})
            text.append({group_by: group, "β": "—", "95% interval": "—", "R²": "—", "ensembles": "—", "note": fit})
    numbers = pd.DataFrame(rows, columns=[group_by, "beta", "ci_low", "ci_high", "stderr", "r2", "n", "note"])
    shown = pd.DataFrame(text, columns=[group_by, "β", "95% interval", "R²", "ensembles", "note"]).set_index(group_by)
    title = (f"Sharpness–diversity slope β by {group_by} (log diversity = α + β log sharpness; "
             f"sharpness {sharpness}, diversity {diversity}; 95% t interval of the least-squares slope, "
             f"β ± t(n−2)·SE; a β from fewer than {MIN_ENSEMBLES} ensembles or whose interval contains 0 "
             "is not told from noise)")
    return numbers, shown, title


def provenance_table(results: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Where each run's numbers come from, as ``(numbers, text, title)``: the run folder, when its
    run.json was written and the library versions it records, the digest of the member files its
    ensemble rows read (each member's when it has no ensemble rows), how many current result rows it
    holds and the sharpdiv versions that measured them."""
    from ensembles.runs import run_folder

    rows = []
    for path, label in zip(runs["path"], runs["run_label"]):
        config = run_folder.read_config(path)
        mine = results[results["path"] == path] if "path" in results else results.iloc[0:0]
        digests = []
        if "weights" in mine and not mine.empty:
            scopes = mine["scope"].astype(str)
            digests = sorted(set(mine.loc[scopes == "ensemble", "weights"].dropna()))
            if not digests:  # no ensemble rows: the members' own digests, in member order
                members = mine[scopes.str.fullmatch(r"member-\d+")]
                order = members["scope"].str.removeprefix("member-").astype(int)
                digests = list(dict.fromkeys(members.assign(_order=order).sort_values("_order")["weights"].dropna()))
        measured = (sorted(set(mine["sharpdiv_version"].dropna().astype(str))) if "sharpdiv_version" in mine else [])
        rows.append({"run": label, "path": str(path), "created": str(config.get("created", "")),
                     **{f"{name} (run.json)": str(version) for name, version in (config.get("versions") or {}).items()},
                     "weights digest": " ".join(map(str, digests)), "result rows": len(mine),
                     "measured with sharpdiv": ", ".join(measured)})
    numbers = pd.DataFrame(rows)
    text = numbers.astype(str).set_index("run")
    title = ("Provenance per run: the folder, when run.json was written and the versions it records, the digest of "
             "the weights its ensemble rows read (each member's when it has none), its current result rows and the "
             "sharpdiv versions that measured them")
    return numbers, text, title


# ----------------------------------------------------------------------------------------------
# writing


def quickstart_summary(runs, sharpness: str = "sharpness/worst/l2/adaptive@0.5") -> list[str]:
    """The summary lines of run folders grouped by method: per method the ensemble accuracy ID/OOD,
    the OOD DER and the mean sharpness; then β per method (the slope of log DER on log sharpness,
    fitted when a method has 3 ensembles with positive sharpness and diversity)."""
    spec = SharpnessSpec.parse(sharpness)
    table = run_table(runs)
    results = collect(table["path"], table)
    summary = summary_table(results, table, group_by="method", sharpness=spec)

    def number(group, column, digits="{:.3g}"):
        value = summary.mean.loc[group].get(column, math.nan) if column in summary.mean.columns else math.nan
        return "n/a" if value is None or not math.isfinite(value) else digits.format(value)

    lines = []
    for group in summary.mean.index:
        lines.append(f"{group:>12}: ensemble accuracy {number(group, 'ensemble accuracy ID (%)', '{:.1f}')}% clean, "
                     f"{number(group, 'ensemble accuracy OOD (%)', '{:.1f}')}% corrupted; DER (corrupted) "
                     f"{number(group, 'DER OOD')}; sharpness {number(group, f'sharpness {spec}')} "
                     f"({int(summary.runs.get(group, 0))} ensembles)")
    points = tradeoff_points(results, sharpness=spec, on="ood", group_by="method")
    points = points[(points["sharpness"] > 0) & (points["diversity"] > 0)]
    fits = fits_by_group(points["sharpness"], points["diversity"], points["group"]) if len(points) else {}
    shown = [f"{group} {fit.beta:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}]" + (f" ({fit.verdict})" if fit.verdict else "")
             for group, fit in fits.items() if isinstance(fit, BetaFit)]
    lines.append("β, slope of log DER on log sharpness [95% t interval]: "
                 + ("; ".join(shown) if shown else "not fitted (a group needs 3 ensembles)"))
    return lines


def markdown(text: pd.DataFrame, title: str = "") -> str:
    """A GitHub-flavoured Markdown table (index as the first column)."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [text.index.name or "", *map(str, text.columns)]
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(cell(h) for h in header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for index, row in text.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in [index, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "−": "$-$", "—": "---", "β": r"$\beta$", "²": r"$^2$", "ρ": r"$\rho$",
                  "τ": r"$\tau$", "ψ": r"$\psi$", "ℓ": r"$\ell$", "∞": r"$\infty$"}


def latex_escape(value) -> str:
    return "".join(_LATEX_SPECIAL.get(character, character) for character in str(value))


def latex(text: pd.DataFrame, title: str = "", label: str = "") -> str:
    """A booktabs LaTeX table (needs ``\\usepackage{booktabs}``), via pandas' ``to_latex``."""
    escaped = text.map(latex_escape)
    escaped.columns = [latex_escape(c) for c in text.columns]
    escaped.index = [latex_escape(i) for i in text.index]
    escaped.index.name = latex_escape(text.index.name or "")
    return escaped.to_latex(escape=False, caption=latex_escape(title) or None, label=label or None,
                            column_format="l" + "r" * len(text.columns), position="htbp")


def write_table(directory: str | os.PathLike, name: str, numbers: pd.DataFrame, text: pd.DataFrame,
                title: str = "", per_run: pd.DataFrame | None = None) -> list[Path]:
    """Write ``<name>.csv`` (numbers), ``<name>.md`` and ``<name>.tex`` (formatted cells) and, when
    given, ``<name>-runs.csv`` (one row per run); return the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = {directory / f"{name}.csv": numbers.to_csv(index=False),
             directory / f"{name}.md": markdown(text, title),
             directory / f"{name}.tex": latex(text, title, label=f"tab:{name}")}
    if per_run is not None:
        files[directory / f"{name}-runs.csv"] = per_run.to_csv()
    for path, content in files.items():
        with atomic_path(path) as temporary:
            temporary.write_text(content, encoding="utf-8")
    return list(files)


def write_group_table(directory: str | os.PathLike, table: GroupTable) -> list[Path]:
    return write_table(directory, table.name, table.numbers(), table.text(), table.title, table.per_run)
