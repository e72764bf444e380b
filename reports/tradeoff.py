"""The sharpness–diversity trade-off exponent β (SharpBalance, NeurIPS 2024, Figs. 5 and 12).

Over the ensembles of one group (one width, one sparsity, one method), the paper fits a straight
line to the points on log–log axes,

    log D = α + β · log S,

with ``S`` the members' sharpness and ``D`` the ensemble's diversity, so that ``D ≈ e^α · S^β``:
β is the exponent of a power law, and a larger β is a steeper decline of diversity as sharpness
is reduced. The slope is the ordinary least-squares one,

    β = Σ (x − x̄)(y − ȳ) / Σ (x − x̄)²,   x = log S, y = log D,

and ``R² = 1 − Σ (y − α − βx)² / Σ (y − ȳ)²`` in the same log space. The paper reports β alone;
we add a 95% percentile-bootstrap interval (Efron and Tibshirani 1993, ch. 13): the points are
resampled in pairs with replacement, β is refitted on each resample, and the interval is the 2.5th
and 97.5th percentiles of those slopes. With as few ensembles as a sweep usually has, that interval
is what tells a real difference in β from noise. The base of the logarithm does not change β.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from landscape._checks import positive_int
from landscape.errors import InputError

__all__ = ["BetaFit", "fit_beta", "fits_by_group"]


@dataclass(frozen=True)
class BetaFit:
    """``log D = intercept + beta · log S`` (natural logarithms) over ``n`` ensembles.

    ``ci_low`` and ``ci_high`` bound the 95% percentile-bootstrap interval of ``beta``; ``r2`` is the
    coefficient of determination of the fit in log–log space.
    """

    beta: float
    ci_low: float
    ci_high: float
    r2: float
    n: int
    intercept: float

    def line(self, sharpness) -> np.ndarray:
        """The fitted power law ``D = e^intercept · S^beta`` at the given sharpness values."""
        return np.exp(self.intercept) * np.asarray(sharpness, dtype=float) ** self.beta


def _as_positive_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} has NaN or infinite values; drop those ensembles before fitting β")
    if np.any(array <= 0):
        raise InputError(f"{name} must be positive to fit β on log axes; got {array[array <= 0][:3].tolist()} "
                         "(a diversity of 0 means identical members: leave those ensembles out)")
    return array


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes along the last axis; NaN where every x is the same."""
    centred_x = x - x.mean(axis=-1, keepdims=True)
    centred_y = y - y.mean(axis=-1, keepdims=True)
    spread = (centred_x * centred_x).sum(axis=-1)
    covariance = (centred_x * centred_y).sum(axis=-1)
    # A resample that drew only points of one sharpness has no slope; it is left out of the percentiles.
    flat = np.ptp(x, axis=-1) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flat, np.nan, covariance / np.where(flat, 1.0, spread))


def fit_beta(sharpness, diversity, n_bootstrap: int = 2000, seed: int = 0) -> BetaFit:
    """Fit ``log diversity = α + β · log sharpness`` by least squares, with a bootstrap interval.

    ``sharpness`` and ``diversity`` are matched sequences (one pair per ensemble) of positive
    numbers; at least 3 pairs with at least 2 distinct sharpness values are needed. The bootstrap
    draws ``n_bootstrap`` resamples of the pairs from ``numpy.random.default_rng(seed)``, so the
    interval is reproducible.
    """
    x = np.log(_as_positive_vector(sharpness, "sharpness"))
    y = np.log(_as_positive_vector(diversity, "diversity"))
    if x.shape != y.shape:
        raise InputError(f"sharpness has {x.size} values but diversity has {y.size}; pass one of each per ensemble")
    n = x.size
    if n < 3:
        raise InputError(f"β needs at least 3 ensembles in a group, got {n}; add runs to the group "
                         "(e.g. more SAM radii) or group by a coarser field")
    positive_int("n_bootstrap", n_bootstrap)
    beta = float(_slopes(x, y))
    if not np.isfinite(beta):
        raise InputError("every ensemble has the same sharpness, so the slope β is undefined; "
                         "vary the sharpness (e.g. the SAM radius) across the group")
    intercept = float(y.mean() - beta * x.mean())
    residual = y - intercept - beta * x
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / total if total > 0 else float("nan")

    generator = np.random.default_rng(seed)
    draws = generator.integers(0, n, size=(int(n_bootstrap), n))
    slopes = _slopes(x[draws], y[draws])
    slopes = slopes[np.isfinite(slopes)]
    ci_low, ci_high = np.percentile(slopes, [2.5, 97.5]) if slopes.size else (np.nan, np.nan)
    return BetaFit(beta=beta, ci_low=float(ci_low), ci_high=float(ci_high), r2=r2, n=int(n),
                   intercept=intercept)


def fits_by_group(sharpness, diversity, groups, n_bootstrap: int = 2000, seed: int = 0) -> dict:
    """:func:`fit_beta` on the points of each group; a group that cannot be fitted maps to the
    reason (fewer than 3 ensembles, non-positive values, one sharpness value) instead of a fit."""
    sharpness, diversity = np.asarray(sharpness, dtype=float), np.asarray(diversity, dtype=float)
    groups = np.asarray(groups, dtype=object)
    fits: dict[str, BetaFit | str] = {}
    for group in dict.fromkeys(groups.tolist()):
        chosen = groups == group
        try:
            fits[group] = fit_beta(sharpness[chosen], diversity[chosen], n_bootstrap=n_bootstrap, seed=seed)
        except InputError as error:
            count = int(chosen.sum())
            fits[group] = (f"needs at least 3 ensembles, has {count}" if count < 3
                           else str(error).split(";")[0])
    return fits
