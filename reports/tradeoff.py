"""The sharpness–diversity trade-off exponent β (SharpBalance, NeurIPS 2024, Figs. 5 and 12).

Over the ensembles of one group (one width, one sparsity, one method), the paper fits a straight
line to the points on log–log axes,

    log D = α + β · log S,

with ``S`` the members' sharpness and ``D`` the ensemble's diversity, so that ``D ≈ e^α · S^β``:
β is the exponent of a power law, and a larger β is a steeper decline of diversity as sharpness
is reduced. The slope is the ordinary least-squares one,

    β = Σ (x − x̄)(y − ȳ) / Σ (x − x̄)²,   x = log S, y = log D,

and ``R² = 1 − Σ (y − α − βx)² / Σ (y − ȳ)²`` in the same log space. The paper reports β alone;
we add the 95% t interval of the least-squares slope,

    β ± t_{n−2, 0.975} · SE,   SE² = Σ (y − α − βx)² / ((n − 2) · Σ (x − x̄)²),

which is exact at any n ≥ 3 when the scatter about the line is Gaussian (Weisberg, *Applied Linear
Regression*, §2.6). A percentile bootstrap of the pairs is not: with 3 ensembles it has only a
handful of distinct slopes and its "95%" interval covers the true slope far less often (about
7 times in 10 on Gaussian data, 9 in 10 at 5 and 12 ensembles; ``tests/reports/test_tradeoff.py``).

An interval alone does not say whether a slope was told from noise, so :attr:`BetaFit.verdict`
does: a group with fewer than :data:`MIN_ENSEMBLES` ensembles, or whose interval contains 0, has
a β that cannot be told from noise. Why 5: below it the residual variance rests on 1 or 2
degrees of freedom (t quantile 12.7 or 4.3), so the interval is wide and hinges on a normality
that 1–2 residuals cannot check. The base of the logarithm does not change β.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from landscape.errors import InputError

__all__ = ["MIN_ENSEMBLES", "BetaFit", "fit_beta", "fits_by_group"]

#: Fewest ensembles for which a β is reported as a measured slope (see the module text).
MIN_ENSEMBLES = 5


@dataclass(frozen=True)
class BetaFit:
    """``log D = intercept + beta · log S`` (natural logarithms) over ``n`` ensembles.

    ``ci_low`` and ``ci_high`` bound the 95% t interval of ``beta`` (``beta ± t · stderr``); ``r2``
    is the coefficient of determination of the fit in log–log space.
    """

    beta: float
    ci_low: float
    ci_high: float
    r2: float
    n: int
    intercept: float
    stderr: float = math.nan

    @property
    def verdict(self) -> str:
        """"" when the slope is told from noise, else why not (too few ensembles, interval spans 0)."""
        if self.n < MIN_ENSEMBLES:
            return f"n = {self.n} < {MIN_ENSEMBLES}: too few ensembles to tell a slope from noise"
        if self.ci_low <= 0 <= self.ci_high:
            return "interval contains 0: slope not told from noise"
        return ""

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


def fit_beta(sharpness, diversity) -> BetaFit:
    """Fit ``log diversity = α + β · log sharpness`` by least squares (``scipy.stats.linregress``),
    with the 95% t interval of β from its standard error.

    ``sharpness`` and ``diversity`` are matched sequences (one pair per ensemble) of positive
    numbers; at least 3 pairs with at least 2 distinct sharpness values are needed.
    """
    x = np.log(_as_positive_vector(sharpness, "sharpness"))
    y = np.log(_as_positive_vector(diversity, "diversity"))
    if x.shape != y.shape:
        raise InputError(f"sharpness has {x.size} values but diversity has {y.size}; pass one of each per ensemble")
    n = x.size
    if n < 3:
        raise InputError(f"β needs at least 3 ensembles in a group, got {n}; add runs to the group "
                         "(e.g. more SAM radii) or group by a coarser field")
    if np.ptp(x) == 0:
        raise InputError("every ensemble has the same sharpness, so the slope β is undefined; "
                         "vary the sharpness (e.g. the SAM radius) across the group")
    line = stats.linregress(x, y)
    # Equal diversities: the slope is exactly 0 with no scatter about it, but linregress leaves the
    # correlation (and with it R² and the slope's standard error) undefined.
    scatter = bool(np.ptp(y) > 0)
    beta = float(line.slope) if scatter else 0.0
    stderr = float(line.stderr) if scatter else 0.0
    r2 = float(line.rvalue) ** 2 if scatter else math.nan
    half = float(stats.t.ppf(0.975, n - 2)) * stderr
    return BetaFit(beta=beta, ci_low=beta - half, ci_high=beta + half, r2=r2, n=int(n),
                   intercept=float(line.intercept), stderr=stderr)


def fits_by_group(sharpness, diversity, groups) -> dict:
    """:func:`fit_beta` on the points of each group; a group that cannot be fitted maps to the
    reason (fewer than 3 ensembles, non-positive values, one sharpness value) instead of a fit."""
    sharpness, diversity = np.asarray(sharpness, dtype=float), np.asarray(diversity, dtype=float)
    groups = np.asarray(groups, dtype=object)
    fits: dict[str, BetaFit | str] = {}
    for group in dict.fromkeys(groups.tolist()):
        chosen = groups == group
        try:
            fits[group] = fit_beta(sharpness[chosen], diversity[chosen])
        except InputError as error:
            count = int(chosen.sum())
            fits[group] = (f"needs at least 3 ensembles, has {count}" if count < 3
                           else str(error).split(";")[0])
    return fits
