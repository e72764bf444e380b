"""Does sharpness predict generalization? Rank correlations across a zoo of trained models.

The question of Andriushchenko et al. ("A modern look at the relationship between sharpness and
generalization", ICML 2023), answered with the field's two standard statistics (REFERENCE.md §8):

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
import re
from typing import Sequence

import numpy as np
import pandas as pd

from landscape.errors import InputError

__all__ = ["TARGETS", "kendall_tau_b", "rank_correlations", "reading"]

#: Targets :func:`zoo_points` builds (``ood_error/s<k>``: mean over the corruptions at severity k).
TARGETS = ("test_error", "generalization_gap", "ood_error", "test_nll", "ece")
#: Fewer models than this and a correlation says nothing: reports skip the section and say why.
MIN_MODELS = 5


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
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 0:
        raise InputError(f"n_bootstrap must be an integer >= 0, got {n_bootstrap!r}")
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
