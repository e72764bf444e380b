"""Does sharpness predict generalization? Rank correlations across a zoo of trained models.

The question of Andriushchenko et al. ("A modern look at the relationship between sharpness and
generalization", ICML 2023), answered with the field's two standard statistics:

- **Kendall's τ-b** between a measure and a target over all models (ties corrected; equal to
  ``scipy.stats.kendalltau``), with a percentile bootstrap interval over models;
- **the granulated coefficient ψ** of Jiang et al. ("Fantastic Generalization Measures and Where
  to Find Them", ICLR 2020, §4): for each hyper-parameter axis, the mean τ over the groups of
  models whose *other* axes are all equal (so only that axis varies inside a group); ψ is the mean
  of these per-axis values. A measure that merely tracks, say, the learning rate has a large pooled
  τ when the learning rate drives the error, but a ψ near 0 along the other axes.

:func:`rank_correlations` works on any table of points (one row per model). :func:`zoo_points`
builds that table from run folders' stored rows (:mod:`reports.collect`): one point per member or
per ensemble, the sharpness definitions and curvature stored as measures, the errors as targets,
and the run.json settings that vary across runs as axes. Nothing here measures anything.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from landscape.checks import positive_int
from landscape.errors import InputError
from reports.collect import CURVATURE_METRICS, RUN_PREFIX, ascent_of, criterion_counts, per_run

__all__ = ["CorrelationSection", "MIN_MODELS", "MIN_RANKED", "TARGETS", "Zoo", "correlation_axes", "forms_a_zoo",
           "kendall_tau_b", "plot_correlations", "rank_correlations", "check_target", "reading", "setting_correlations", "write_correlations",
           "zoo_axes", "zoo_measures", "zoo_points"]

#: Targets :func:`zoo_points` builds (``ood_error/s<k>``: mean over the corruptions at severity k).
TARGETS = ("test_error", "generalization_gap", "ood_error", "test_nll", "ece")
#: Fewer models than this and a correlation says nothing: reports skip the section and say why.
MIN_MODELS = 5
#: Fewer models than this and a rank correlation is not shown as informative: the bootstrap interval
#: of τ over 5-7 points spans most of [−1, 1] (over 5 ensembles it was [−1.00, 1.00]). The report
#: leaves out ensemble-level rows over fewer ensembles, and shows the section unasked only for a zoo
#: of at least this many models.
MIN_RANKED = 8


# ----------------------------------------------------------------------------------------------
# Kendall τ-b, for one sample or a batch of bootstrap resamples at once


def _tau_b_batch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """τ-b of each row pair of ``x`` and ``y`` ``(B, n)``: Σ sign(Δx)·sign(Δy) over pairs, divided by
    sqrt((n0 − ties in x)(n0 − ties in y)). The sign matrices count every pair twice, which cancels.
    NaN where one side is constant (τ is undefined there, as in scipy)."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    concordance = np.einsum("bij,bij->b", sx, sy)
    untied = np.einsum("bij,bij->b", sx, sx) * np.einsum("bij,bij->b", sy, sy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(untied > 0, concordance / np.sqrt(untied), np.nan)


def kendall_tau_b(x, y) -> float:
    """Kendall's τ-b of two equal-length sequences (NaN when either is constant or n < 2)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise InputError(f"kendall_tau_b needs two 1-d sequences of one length, got shapes {x.shape} and {y.shape}")
    if len(x) < 2:
        return math.nan
    return float(_tau_b_batch(x[None], y[None])[0])


def _bootstrap_interval(x: np.ndarray, y: np.ndarray, n_bootstrap: int, rng: np.random.Generator,
                        confidence: float) -> tuple[float, float]:
    """Percentile interval of τ over ``n_bootstrap`` resamples of the models (with replacement).
    Resamples where τ is undefined (every model drawn tied) are left out of the quantiles."""
    n = len(x)
    if n < 2 or n_bootstrap == 0:
        return math.nan, math.nan
    draws = rng.integers(0, n, size=(n_bootstrap, n))
    chunk = max(1, 4_000_000 // (n * n))  # bounds the (chunk, n, n) sign matrices in memory
    taus = np.concatenate([_tau_b_batch(x[draws[start:start + chunk]], y[draws[start:start + chunk]])
                           for start in range(0, n_bootstrap, chunk)])
    taus = taus[np.isfinite(taus)]
    if taus.size == 0:
        return math.nan, math.nan
    tail = (1 - confidence) / 2
    low, high = np.quantile(taus, [tail, 1 - tail])
    return float(low), float(high)


# ----------------------------------------------------------------------------------------------
# ψ (Jiang et al. 2020)


def _axis_key(values: pd.DataFrame) -> pd.Series:
    """One hashable text per row for the values of ``values``' columns (None and NaN alike)."""
    if values.shape[1] == 0:
        return pd.Series("", index=values.index)
    cells = values.astype(object).where(values.notna(), "(unset)").astype(str)
    return cells.agg("\x1f".join, axis=1)


def _per_axis_tau(frame: pd.DataFrame, measure: str, target: str, axes: Sequence[str]) -> dict[str, float]:
    """For each axis, the mean τ over the groups of ≥ 2 models that share every other axis and
    differ in this one (NaN when there is no such group, or τ is undefined in every group)."""
    result = {}
    for axis in axes:
        others = [a for a in axes if a != axis]
        taus = []
        for _, group in frame.groupby(_axis_key(frame[others]), sort=False):
            if len(group) < 2 or _axis_key(group[[axis]]).nunique() < 2:
                continue  # one model, or models that differ in no axis (seeds only): not this axis varying
            tau = kendall_tau_b(group[measure], group[target])
            if math.isfinite(tau):
                taus.append(tau)
        result[axis] = float(np.mean(taus)) if taus else math.nan
    return result


def _psi(per_axis: dict[str, float], axes: Sequence[str]) -> tuple[float, str]:
    """ψ = mean over axes of the per-axis τ, and a note when ψ is NaN or leaves an axis out."""
    if not axes:
        return math.nan, "no hyper-parameter axes: ψ needs models that differ in named settings"
    defined = [axis for axis in axes if math.isfinite(per_axis[axis])]
    if not defined:
        return math.nan, (f"no axis varies alone: no two models differ only in one of {', '.join(axes)} "
                          "(or τ is undefined in every such group)")
    missing = [axis for axis in axes if axis not in defined]
    note = "" if not missing else (f"mean over {', '.join(defined)} only: {', '.join(missing)} never varies alone "
                                   "(or τ is undefined in every group where it does)")
    return float(np.mean([per_axis[axis] for axis in defined])), note


def setting_correlations(points: pd.DataFrame, columns: Sequence[str], axes: Sequence[str], n_bootstrap: int = 2000,
                         seed: int = 0, confidence: float = 0.95) -> pd.DataFrame:
    """How each column (a measure or a target) moves with each numeric hyper-parameter: the mean τ
    between the column and the axis's value over the groups of models that differ only in that axis
    (Jiang et al.'s granulation, with the axis itself as the other variable), so +1 means the column
    rises with the axis in every such group. Andriushchenko et al. (ICML 2023, §4) find sharpness
    tracking training settings such as the learning rate rather than generalization; this is that
    question on a zoo. One row per (column, axis): ``tau`` (the mean), ``tau_low``/``tau_high`` (a
    percentile bootstrap over the groups) and ``groups``; an axis whose values are not all numbers
    (a method name) has no order and is left out."""
    numeric = [axis for axis in axes if pd.to_numeric(points[axis], errors="coerce").notna().all()]
    rng = np.random.default_rng(seed)
    rows = []
    for column in columns:
        values = _finite_or_missing(points, column)
        for axis in numeric:
            frame = pd.DataFrame({column: values, axis: pd.to_numeric(points[axis]).astype(float)})
            frame = pd.concat([frame, points[[a for a in numeric if a != axis]]], axis=1)[values.notna()]
            others = [a for a in numeric if a != axis]
            taus = []
            for _, group in frame.groupby(_axis_key(frame[others]), sort=False):
                if len(group) >= 2 and group[axis].nunique() >= 2:
                    tau = kendall_tau_b(group[column], group[axis])
                    if math.isfinite(tau):
                        taus.append(tau)
            taus = np.asarray(taus)
            low = high = math.nan
            if len(taus) >= 2 and n_bootstrap:
                means = rng.choice(taus, size=(int(n_bootstrap), len(taus))).mean(axis=1)
                low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
            rows.append({"measure": column, "axis": axis, "tau": float(taus.mean()) if len(taus) else math.nan,
                         "tau_low": float(low), "tau_high": float(high), "groups": len(taus)})
    return pd.DataFrame(rows, columns=["measure", "axis", "tau", "tau_low", "tau_high", "groups"])


# ----------------------------------------------------------------------------------------------
# the table


def _check_columns(points: pd.DataFrame, names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in points.columns]
    if missing:
        raise InputError(f"points has no column {missing[0]!r} for the {what}; its columns are "
                         f"{', '.join(map(str, points.columns))}")


def _finite_or_missing(points: pd.DataFrame, column: str) -> pd.Series:
    """The column as floats; NaN means "not measured for this model" (left out of that pair, and
    ``n`` says how many remain); ±inf is a broken number and refused."""
    try:
        values = pd.to_numeric(points[column], errors="raise").astype(float)
    except (TypeError, ValueError):
        raise InputError(f"column {column!r} of the points is not numeric; pass numbers (NaN where not measured)") from None
    if np.isinf(values).any():
        raise InputError(f"column {column!r} holds an infinite value for {int(np.isinf(values).sum())} model(s); "
                         "a rank correlation over it would be meaningless: fix or remove those models")
    return values


def rank_correlations(points: pd.DataFrame, measures: Sequence[str], targets: Sequence[str],
                      axes: Sequence[str] = (), n_bootstrap: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> pd.DataFrame:
    """Kendall τ-b and Jiang et al.'s ψ of every measure against every target, over the models.

    ``points`` has one row per model and a column per measure, target and axis. Returns one row
    per (measure, target) with ``tau``, ``tau_low``/``tau_high`` (percentile bootstrap over models,
    ``n_bootstrap`` resamples, reproducible by ``seed``), ``psi``, ``psi/<axis>`` per axis,
    ``psi_note`` (why ψ is NaN or leaves an axis out; empty otherwise) and ``n`` (the models that
    have both numbers; a NaN marks a model where one is not measured).
    """
    measures, targets, axes = list(measures), list(targets), list(axes)
    if not measures or not targets:
        raise InputError("rank_correlations needs at least one measure and one target")
    for names, what in ((measures, "measures"), (targets, "targets"), (axes, "axes")):
        _check_columns(points, names, what)
    positive_int("n_bootstrap", n_bootstrap, minimum=0)
    if not 0 < confidence < 1:
        raise InputError(f"confidence must lie in (0, 1), got {confidence!r}")
    numbers = {name: _finite_or_missing(points, name) for name in dict.fromkeys(measures + targets)}
    rng = np.random.default_rng(seed)
    rows = []
    for measure in measures:
        for target in targets:
            both = numbers[measure].notna() & numbers[target].notna()
            frame = pd.DataFrame({measure: numbers[measure], target: numbers[target]})
            frame = pd.concat([frame[both], points.loc[both, axes]], axis=1) if axes else frame[both]
            x, y = frame[measure].to_numpy(), frame[target].to_numpy()
            # one child generator per pair: a pair's interval does not depend on which pairs came before
            low, high = _bootstrap_interval(x, y, int(n_bootstrap), np.random.default_rng(rng.integers(2 ** 63)),
                                            confidence)
            per_axis = _per_axis_tau(frame, measure, target, axes)
            psi, note = _psi(per_axis, axes)
            rows.append({"measure": measure, "target": target, "tau": kendall_tau_b(x, y), "tau_low": low,
                         "tau_high": high, "psi": psi, **{f"psi/{axis}": per_axis[axis] for axis in axes},
                         "psi_note": note, "n": int(both.sum())})
    return pd.DataFrame(rows)


def reading(table: pd.DataFrame, target: str) -> str:
    """One sentence: the strongest and weakest measure by |τ| against ``target``, and whether ψ agrees."""
    rows = table[(table["target"] == target) & table["tau"].notna()]
    if rows.empty:
        return f"No measure has a defined τ against {target}."
    order = rows.assign(strength=rows["tau"].abs()).sort_values("strength", ascending=False)
    strongest, weakest = order.iloc[0], order.iloc[-1]

    def shown(row) -> str:
        interval = "" if not math.isfinite(row["tau_low"]) else f" [{row['tau_low']:.2f}, {row['tau_high']:.2f}]"
        return f"{row['measure']} (τ = {row['tau']:.2f}{interval})"

    sentence = (f"Against {target} over {int(strongest['n'])} models, the strongest rank correlation is "
                f"{shown(strongest)} and the weakest {shown(weakest)}")
    if not math.isfinite(strongest["psi"]):
        return sentence + "; ψ is not defined here (" + (strongest["psi_note"] or "no axes") + ")."
    agrees = np.sign(strongest["psi"]) == np.sign(strongest["tau"]) and abs(strongest["psi"]) >= 0.5 * abs(strongest["tau"])
    verdict = ("agrees: the correlation holds while one hyper-parameter varies at a time" if agrees else
               "does not agree: much of the pooled correlation comes from the hyper-parameters rather than "
               "from the measure ranking models that differ in one setting")
    interval_covers_zero = math.isfinite(strongest["tau_low"]) and strongest["tau_low"] <= 0 <= strongest["tau_high"]
    caveat = "; its interval includes 0" if interval_covers_zero else ""
    return f"{sentence}{caveat}; its ψ = {strongest['psi']:.2f} {verdict}."


# ----------------------------------------------------------------------------------------------
# points from run folders


#: Sharpness definitions the zoo correlates (loss increase; the 0-1 error increase is left out).
_SHARPNESS = re.compile(r"sharpness/(worst|average)/(l2|linf)/(adaptive|standard)")
#: run.json fields that say where, how fast or which seed, never which hyper-parameters: not axes.
_NOT_AXES = {"seeds", "data_path", "score_chunk_size", "threads", "device", "sweep_group", "n_members", "keep",
             "stop_epoch", "reached_criterion", "n_reached", "n_stopped"}  # how training ended: outcomes


@dataclass(frozen=True)
class Zoo:
    """Points of a model zoo: ``points`` (one row per member or ensemble: ``path``, ``member``
    (-1 for an ensemble), a column per measure, target and axis), and the names of each kind."""

    points: pd.DataFrame
    measures: tuple[str, ...]
    targets: tuple[str, ...]
    axes: tuple[str, ...]


def zoo_measures(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Every stored sharpness definition and per-member curvature, as ``name -> its rows``.

    A sharpness definition is the metric, the radius and m (the batch each perturbation sees):
    ``sharpness/worst/l2/adaptive@0.5 m=128`` (``@0.5:reference m=128`` for rows measured with the
    reference code's ascent). Curvature metrics (``hessian/trace``) keep their name.
    """
    if results.empty or "metric" not in results:
        return {}
    found = {}
    rows = results[results["metric"].map(lambda metric: bool(_SHARPNESS.fullmatch(str(metric))))]
    if not rows.empty:
        m = rows["m"] if "m" in rows else pd.Series(np.nan, index=rows.index)
        keys = pd.DataFrame({"metric": rows["metric"], "rho": rows["rho"].astype(float), "m": m}, index=rows.index)
        ascent = ascent_of(rows)  # sharpdiv's APGD and the reference code's ascent are two definitions
        for (metric, rho, batch, how), chosen in rows.groupby([keys["metric"], keys["rho"], keys["m"].fillna(-1),
                                                               ascent], sort=True):
            name = (f"{metric}@{rho:g}" + ("" if how == "apgd" else f":{how}")
                    + ("" if batch == -1 else f" m={int(batch)}"))
            found[name] = chosen
    for metric in CURVATURE_METRICS:
        chosen = results[results["metric"] == metric]
        if not chosen.empty:
            found[metric] = chosen
    return found


def correlation_axes(runs: pd.DataFrame) -> tuple[str, ...]:
    """The run.json settings that vary across ``runs`` (:func:`reports.collect.run_table`), as axes.

    Seeds, paths and bookkeeping are not axes, nor how training ended (the stopping epoch). Two
    settings that always change together (``method`` sgd/sam with ``rho`` 0/0.05) are one axis, named
    by the first: apart they never vary alone. The ``epochs`` of a run trained to a criterion is its
    cap, not how long it trained (:func:`_axis_settings`).
    """
    settings = _axis_settings(runs)
    axes: list[str] = []
    for column in settings.columns:
        if not column.startswith(RUN_PREFIX) or column[len(RUN_PREFIX):] in _NOT_AXES:
            continue
        values = settings[column].astype(object).where(settings[column].notna(), "(unset)").astype(str)
        if values.nunique() < 2:
            continue
        twin = next((axis for axis in axes if _same_partition(values, settings[RUN_PREFIX + axis])), None)
        if twin is None:
            axes.append(column[len(RUN_PREFIX):])
    return tuple(axes)


def zoo_axes(runs: pd.DataFrame, group_by: str = "method") -> tuple[str, ...]:
    """The axes (:func:`correlation_axes`) that make ``runs`` a zoo rather than a comparison of groups:
    all but the method, the settings only sharpness-aware methods use (ρ, k, T_d ...: a method
    comparison varies them with the method), and the fields of the grouping ``group_by`` (a comma
    list; ``construction`` is the single-basin settings). A zoo varies how one kind of model is
    trained (learning rate, batch size, width, weight decay ...), as Jiang et al. (ICLR 2020, §2)
    build theirs."""
    from ensembles.training.settings import SINGLE_BASIN, declared

    grouping = {field.strip() for field in str(group_by).split(",")}
    left_out = {"method"} | grouping
    for name, declaration in declared().items():
        if not declaration.used_by("sgd") or ("construction" in grouping and declaration.methods == SINGLE_BASIN):
            left_out.add(name)
    return tuple(axis for axis in correlation_axes(runs) if axis not in left_out)


def forms_a_zoo(runs: pd.DataFrame, group_by: str = "method") -> bool:
    """Whether ``runs`` (:func:`reports.collect.run_table`) form a zoo whose rank correlations the
    report shows unasked: at least :data:`MIN_RANKED` models (members) and a :func:`zoo_axes` axis."""
    models = int(runs[RUN_PREFIX + "n_members"].sum()) if RUN_PREFIX + "n_members" in runs else 0
    return models >= MIN_RANKED and bool(zoo_axes(runs, group_by))


#: The ``epochs`` of every run trained to a criterion, as an axis sees it: one value, whatever the cap.
TO_A_CRITERION = "(to a criterion)"


def _axis_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with the ``epochs`` of each run trained to a criterion (``until_train_loss`` or
    ``until_train_accuracy`` set) read as :data:`TO_A_CRITERION`. Such a run stops at its criterion and
    ``epochs`` only caps it (Jiang et al., ICLR 2020, stop every model at one training cross-entropy):
    two caps are not two training lengths, and a cap that a sweep sets per learning rate would otherwise
    be the learning rate's twin. Whether a model reached its criterion is an outcome, marked on its point.
    Fixed-length runs keep their epochs, an axis among themselves."""
    criteria = [RUN_PREFIX + name for name in ("until_train_loss", "until_train_accuracy") if RUN_PREFIX + name in runs]
    if not criteria or RUN_PREFIX + "epochs" not in runs:
        return runs
    to_a_criterion = runs[criteria].notna().any(axis=1)
    epochs = runs[RUN_PREFIX + "epochs"].astype(object).where(~to_a_criterion, TO_A_CRITERION)
    return runs.assign(**{RUN_PREFIX + "epochs": epochs})


def _same_partition(values: pd.Series, other: pd.Series) -> bool:
    other = other.astype(object).where(other.notna(), "(unset)").astype(str)
    pairs = pd.DataFrame({"a": values.values, "b": other.values}).drop_duplicates()
    return pairs["a"].is_unique and pairs["b"].is_unique


def _train_rows(results: pd.DataFrame) -> pd.DataFrame:
    corrupted = results["corruption"].notna() if "corruption" in results else False
    return results[(results["split"] == "train") & ~corrupted]


def _targets(results: pd.DataFrame, scope: str, combine: str | None) -> pd.DataFrame:
    """The targets of one scope (``member-<i>`` or ``ensemble``) per run (index ``path``)."""
    combine = combine if scope == "ensemble" else None
    test_error = 1 - per_run(results, "accuracy", scope=scope, on="test", combine=combine)
    train_error = 1 - per_run(_train_rows(results), "accuracy", scope=scope, on="any", combine=combine)
    targets = pd.DataFrame({
        "test_error": test_error,
        "generalization_gap": test_error - train_error.reindex(test_error.index),
        "ood_error": 1 - per_run(results, "accuracy", scope=scope, on="ood", combine=combine),
        "test_nll": per_run(results, "nll", scope=scope, on="test", combine=combine),
        "ece": per_run(results, "ece", scope=scope, on="test", combine=combine),
    })
    by_severity = 1 - per_run(results, "accuracy", scope=scope, on="ood", combine=combine, by_severity=True)
    for severity in by_severity.columns:
        targets[f"ood_error/s{severity}"] = by_severity[severity]
    return targets


def zoo_points(results: pd.DataFrame, runs: pd.DataFrame, *, of: str = "members",
               combine: str | None = "probs") -> Zoo:
    """The zoo's points from stored rows: one per member (``of="members"``) or per ensemble.

    Measures are :func:`zoo_measures` (an ensemble's is its members' mean, NaN unless every member
    has it); targets are ``test_error`` (1 − accuracy on the clean test split), ``generalization_gap``
    (test error − error on the training split, evaluated without augmentation: ``sharpdiv evaluate
    --splits train,val,test``), ``ood_error`` (mean over every stored corruption and severity) and
    ``ood_error/s<k>`` (mean over corruptions at severity k), ``test_nll`` and ``ece`` (clean test);
    axes are :func:`correlation_axes`. A number a run lacks is NaN, never filled in. Points of runs
    trained to a criterion say whether they met it (``reached_criterion``; None for other runs).
    """
    if of not in ("members", "ensembles"):
        raise InputError(f"points of {of!r}: use members or ensembles")
    axes = correlation_axes(runs)
    if not results.empty and "metric" in results:  # only the rows read below: the table is mostly bins
        results = results[results["metric"].isin(["accuracy", "nll", "ece", *CURVATURE_METRICS])
                          | results["metric"].str.startswith("sharpness/")]
        results = results[~results["scope"].str.startswith("ensemble@")]
    measures = zoo_measures(results)
    settings = _axis_settings(runs).set_index("path")
    largest = int(settings[RUN_PREFIX + "n_members"].max()) if len(settings) else 0
    frames = []
    for member in range(largest) if of == "members" else [-1]:
        scope = "ensemble" if member < 0 else f"member-{member}"
        frame = _targets(results, scope, combine).reindex(settings.index)
        for name, rows in measures.items():
            if member >= 0:
                frame[name] = per_run(rows, rows["metric"].iloc[0], scope=scope, on="any", combine=None)
            else:
                frame[name] = per_run(rows, rows["metric"].iloc[0], scope="members", on="any", combine=None)
        frame = frame[frame.index.map(lambda path: member < int(settings.loc[path, RUN_PREFIX + "n_members"]))]
        frame["reached_criterion"] = _reached(results, scope).reindex(frame.index)
        frames.append(frame.assign(member=member))
    points = pd.concat(frames) if frames else pd.DataFrame()
    points.index.name = "path"
    # in the order of the runs' folder names (then whole paths, for two runs of one name), not of the
    # paths given: the bootstrap resamples by position, so its interval must not depend on the order
    # (or the parent folder) of the runs
    points = points.reset_index()
    points = (points.assign(order=points["path"].map(lambda path: Path(str(path)).name), full=points["path"].map(str))
              .sort_values(["order", "full", "member"]).drop(columns=["order", "full"]).reset_index(drop=True))
    for axis in axes:
        points[axis] = points["path"].map(settings[RUN_PREFIX + axis])
    targets = [name for name in points.columns if name in TARGETS or name.startswith("ood_error/s")]
    return Zoo(points=points, measures=tuple(measures), targets=tuple(targets), axes=axes)


def _reached(results: pd.DataFrame, scope: str) -> pd.Series:
    """Whether the model of ``scope`` met its run's training criterion, per run (index ``path``; None
    for runs trained without one), from the rows' ``run.reached_criterion``."""
    column = RUN_PREFIX + "reached_criterion"
    if results.empty or column not in results:
        return pd.Series(dtype=object)
    rows = results[results["scope"] == scope]
    return rows.groupby("path")[column].first().astype(object).where(lambda values: values.notna(), None)


# ----------------------------------------------------------------------------------------------
# the figure


def _short(measure: str) -> str:
    """``worst ℓ2 adaptive ρ=0.5 m=128`` for ``sharpness/worst/l2/adaptive@0.5 m=128``."""
    match = re.fullmatch(r"sharpness/(worst|average)/(l2|linf)/(adaptive|standard)@([^\s:]+)(?::(\w+))?(?: m=(\d+))?",
                         measure)
    if not match:
        return measure
    kind, norm, scaling, rho, ascent, m = match.groups()
    return (f"{kind} {'ℓ2' if norm == 'l2' else 'ℓ∞'} {scaling} ρ={rho}" + (f" ({ascent} ascent)" if ascent else "")
            + (f" m={m}" if m else ""))


def _title(row: pd.Series) -> str:
    interval = "" if not math.isfinite(row["tau_low"]) else f" [{row['tau_low']:.2f}, {row['tau_high']:.2f}]"
    psi = "n/a" if not math.isfinite(row["psi"]) else f"{row['psi']:.2f}"
    return f"{_short(row['measure'])}\nτ = {row['tau']:.2f}{interval}, ψ = {psi}"


def plot_correlations(zoo: Zoo, table: pd.DataFrame, target: str, directory: str | os.PathLike, *,
                      colour_by: str | None = None, formats: Sequence[str] = ("png", "svg"), stem: str = "correlation"):
    """One panel per measure: the measure against ``target`` over the zoo's points, on log axes
    where every value is positive, coloured by the axis ``colour_by`` (default: the axis with the
    most values), with τ [bootstrap interval] and ψ in the panel's title; a model that did not reach
    its training criterion is a hollow marker. Returns plots.Figures."""
    from reports import plots

    if target not in zoo.points.columns:
        return plots.skipped(f"no point has the target {target!r}; the targets here are {', '.join(zoo.targets)}")
    rows = table[table["target"] == target].set_index("measure")
    measures = [m for m in zoo.measures if m in rows.index and rows.loc[m, "n"] >= 2]
    if not measures:
        return plots.skipped(f"no measure has two or more models with {target}")
    if colour_by is None and zoo.axes:
        colour_by = max(zoo.axes, key=lambda axis: zoo.points[axis].nunique())
    columns = min(3, len(measures))
    panel_rows = math.ceil(len(measures) / columns)
    with plots.plot_style():
        figure, axes = plots.new_figure(panel_rows, columns, width=4.2, height=3.6)
        labels = (zoo.points[colour_by].map(lambda v: "(unset)" if pd.isna(v) else f"{v:g}" if isinstance(v, float) else str(v))
                  if colour_by else pd.Series("all", index=zoo.points.index))
        order = _ordered(labels)
        palette = plots.group_palette(order)
        for position, measure in enumerate(measures):
            axis = axes.flat[position]
            both = zoo.points[measure].notna() & zoo.points[target].notna()
            x, y = zoo.points.loc[both, measure], zoo.points.loc[both, target]
            missed = _missed_criterion(zoo.points)[both]
            for label in order:
                chosen = (labels[both] == label) & ~missed
                axis.scatter(x[chosen], y[chosen], s=22, color=palette[label], label=label, alpha=0.85,
                             edgecolor="white", linewidth=0.4)
                hollow = (labels[both] == label) & missed
                if hollow.any():
                    axis.scatter(x[hollow], y[hollow], s=22, facecolors="none", edgecolors=palette[label], linewidth=1.0)
            if position == 0 and missed.any():  # one legend entry for the marking, whatever the colour
                axis.scatter([], [], s=22, facecolors="none", edgecolors="grey", label="hollow: criterion not reached")
            if (x > 0).all() and len(x):
                axis.set_xscale("log")
                plots.label_log_axis(axis.xaxis, (x.min(), x.max()))
            if (y > 0).all() and len(y):
                axis.set_yscale("log")
                plots.label_log_axis(axis.yaxis, (y.min(), y.max()))
            axis.set_xlabel(_short(measure))
            axis.set_ylabel(target)
            axis.set_title(_title(pd.concat([rows.loc[measure], pd.Series({"measure": measure})])), fontsize=9)
        for axis in list(axes.flat)[len(measures):]:
            axis.set_visible(False)
        if colour_by or _missed_criterion(zoo.points).any():
            axes.flat[0].legend(title=colour_by, fontsize=7, title_fontsize=8, loc="best")
        paths = plots.save_figure(figure, Path(directory), stem, formats)
    return plots.Figures(paths=tuple(paths), figures=(figure,))


def _missed_criterion(points: pd.DataFrame) -> pd.Series:
    """True for the points that stopped at the cap without their training criterion (a run without a
    criterion, None, misses nothing)."""
    if "reached_criterion" not in points:
        return pd.Series(False, index=points.index)
    return points["reached_criterion"].map(lambda value: value is not None and not pd.isna(value)
                                           and not bool(value)).astype(bool)


def _ordered(labels: pd.Series) -> list[str]:
    from reports.collect import group_order

    return group_order(labels)


# ----------------------------------------------------------------------------------------------
# the report's section


@dataclass(frozen=True)
class CorrelationSection:
    """What :func:`write_correlations` wrote: the table files and their formatted text, the figure,
    the one-sentence reading, and notes (why there is no section, what is missing)."""

    tables: tuple[Path, ...] = ()
    text: pd.DataFrame | None = None
    settings_text: pd.DataFrame | None = None
    figures: tuple[Path, ...] = ()
    reading: str = ""
    notes: tuple[str, ...] = ()


def _number(value, digits=2) -> str:
    return "" if not isinstance(value, (int, float)) or not math.isfinite(value) else f"{value:.{digits}f}"


def _formatted(table: pd.DataFrame) -> pd.DataFrame:
    number = _number

    text = pd.DataFrame({
        "points": table["points"], "measure": table["measure"].map(_short), "target": table["target"],
        "τ [95% CI]": [f"{number(r.tau)} [{number(r.tau_low)}, {number(r.tau_high)}]" for r in table.itertuples()],
        "ψ": table["psi"].map(number),
        **{column: table[column].map(number) for column in table.columns if column.startswith("psi/")},
        "n": table["n"].astype(int).astype(str),
    })
    return text


def check_target(target: str) -> str:
    """``target`` if it names a target :func:`zoo_points` builds, else an InputError listing them."""
    if target in TARGETS or re.fullmatch(r"ood_error/s[1-5]", str(target)):
        return target
    raise InputError(f"--correlate-with {target!r}: choose one of {', '.join(TARGETS)} or ood_error/s<1-5> "
                     "(the corrupted-data error at one severity)")


def write_correlations(results: pd.DataFrame, runs: pd.DataFrame, tables_dir: str | os.PathLike,
                       figures_dir: str | os.PathLike, *, target: str = "test_error", combine: str | None = "probs",
                       n_bootstrap: int = 2000, seed: int = 0, formats: Sequence[str] = ("png", "svg")) -> CorrelationSection:
    """``tables/correlation.{csv,md,tex}`` (per-member points; per-ensemble ones too when a run has
    several members, each over at least :data:`MIN_RANKED` ensembles) and the figure
    ``correlation-<target>`` of the per-member points. With fewer than :data:`MIN_MODELS` models, or no
    measure or target stored, nothing is written and a note says why."""
    from reports.tables import write_table

    if RUN_PREFIX + "dataset" in runs and runs[RUN_PREFIX + "dataset"].nunique() > 1:
        return CorrelationSection(notes=("no correlation section: the runs span several datasets, and models "
                                         "on different data are not ranked together; report one dataset's runs",))
    members = zoo_points(results, runs, of="members", combine=combine)
    if len(members.points) < MIN_MODELS:
        return CorrelationSection(notes=(f"no correlation section: {len(members.points)} model(s), and a rank "
                                         f"correlation over fewer than {MIN_MODELS} says nothing; add runs",))
    if not members.measures:
        return CorrelationSection(notes=("no correlation section: no run stores a sharpness or curvature "
                                         "measurement (`sharpdiv sharpness RUN`, `sharpdiv hessian RUN --trace`)",))
    targets = [t for t in members.targets if members.points[t].notna().sum() >= 2]
    if not targets:
        return CorrelationSection(notes=("no correlation section: no two models have a stored test or "
                                         "corrupted-data evaluation (`sharpdiv evaluate RUN --splits train,val,test`)",))
    notes = []
    if members.points["generalization_gap"].isna().all():
        notes.append("generalization_gap is missing: no run has rows on the train split; run "
                     "`sharpdiv evaluate RUN --splits train,val,test`")
    parts = [rank_correlations(members.points, members.measures, targets, members.axes, n_bootstrap, seed)
             .assign(points="members")]
    if (runs[RUN_PREFIX + "n_members"] > 1).any():
        ensembles = zoo_points(results, runs, of="ensembles", combine=combine)
        measured = [t for t in ensembles.targets if ensembles.points[t].notna().sum() >= 2]
        ranked = (rank_correlations(ensembles.points, ensembles.measures, measured, ensembles.axes, n_bootstrap,
                                    seed).assign(points="ensembles") if measured and ensembles.measures else None)
        if ranked is not None and (ranked["n"] < MIN_RANKED).any():
            notes.append(f"ensemble-level rank correlations over fewer than {MIN_RANKED} ensembles left out "
                         f"({int(ranked['n'].max())} ensembles at most): their τ intervals span most of [−1, 1]")
            ranked = ranked[ranked["n"] >= MIN_RANKED]
        if ranked is not None and not ranked.empty:
            parts.append(ranked)
    table = pd.concat(parts, ignore_index=True)
    table = table[["points", *[c for c in table.columns if c != "points"]]]
    text = _formatted(table)
    title = "Rank correlation (Kendall τ-b, 95% bootstrap interval) and Jiang et al.'s ψ of each measure with each target"
    files = write_table(tables_dir, "correlation", table, text.set_index("measure"), title)
    moves = setting_correlations(members.points, [*members.measures, *targets], members.axes, n_bootstrap, seed)
    settings_text = None
    if not moves.empty:
        settings_text = pd.DataFrame({
            "measure": moves["measure"].map(_short), "setting": moves["axis"],
            "τ with the setting [95% CI]": [f"{_number(r.tau)} [{_number(r.tau_low)}, {_number(r.tau_high)}]"
                                            for r in moves.itertuples()],
            "groups": moves["groups"].astype(int).astype(str)})
        files = files + write_table(tables_dir, "correlation-settings", moves, settings_text.set_index("measure"),
                                    "How each measure and target moves with each setting: the mean Kendall τ between it "
                                    "and the setting's value over the groups of models that differ only in that setting "
                                    "(+1: it rises with the setting in every group; 95% bootstrap interval over groups)")
    figure = plot_correlations(members, table[table["points"] == "members"], target, figures_dir, formats=formats,
                               stem=f"correlation-{target.replace('/', '-')}")
    if figure.reason:
        notes.append(f"correlation figure skipped: {figure.reason}")
    counted = " ".join(sentence + "." for sentence in criterion_counts(runs))
    return CorrelationSection(tables=tuple(files), text=text, settings_text=settings_text, figures=figure.paths,
                              reading=" ".join(filter(None, [reading(table[table["points"] == "members"], target),
                                                             counted])),
                              notes=tuple(notes))
