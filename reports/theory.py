"""Theory against simulation: the figures of SharpBalance §3 and App. C.3 (Lu et al., NeurIPS 2024).

Each figure sweeps SAM's radius ρ (and, for Figs. 1b and 9, the number of iterations k) on the
random quadratic problem of :mod:`landscape.theory` and plots the diversity against the sharpness,
as Theorems 1 and 2 predict them (lines) and as simulated (points with standard errors over data
sets). Alongside every figure goes a long-format CSV with one row per point and quantity.

- ``"2"``: Theorem 1 (SAM), both sharpness bounds, ρ from 0 to 1, k = 4, η = 0.1.
- ``"1b"``: SAM and SharpBalance (Theorems 1 and 2, upper bounds) on one grid: η = 0.3,
  k ∈ {1, 2, 4, 8, 16, 32}, ρ from 0 to 1, one line per k.
- ``"9"``: Theorem 2; (a) ρ from 1.0 to 0.4 at k = 8, (b) k from 1 to 15 at ρ = 0.5; η = 0.3.
- ``"10"``: Theorem 1, k ∈ {2, 4, 8} × η ∈ {0.1, 0.05, 0.01}, ρ from 0.3 to 0.5.
- ``"11"``: Theorem 2 (S = 10), k ∈ {4, 8, 12} × η ∈ {0.5, 0.3, 0.1}, ρ from 0.3 to 0.5.

η and ρ are in the paper's units: the step and radius for the objective divided by
``n_tr/d_in`` (unit-mean Hessian). The paper's grids diverge in the theorem's own units
(``λmax(AᵀA) ≈ 31`` for 3000×150), so the theorem is evaluated at ``η·d_in/n_tr`` and
``ρ·d_in/n_tr``, which gives the very same SAM iterates (docs/theory.md). Parameters the paper does not give
(k, η for Figs. 1b, 2, 9; σ, ‖θ*‖, ρ0) are choices recorded there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from landscape.errors import InputError
from landscape.theory import QuadraticSetting, draw_problems, simulate_tradeoff, theorem_1, theorem_2

__all__ = [
    "FIGURES",
    "MatchedSharpnessFinding",
    "diversity_at_matched_sharpness",
    "draw_theory_figure",
    "quick_setting",
    "theory_figure",
    "theory_table",
]

FIGURES = ("1b", "2", "9", "10", "11")
METHOD_NAMES = {"sam": "SAM", "sharpbalance": "SharpBalance"}
THEOREMS = {"sam": "Theorem 1", "sharpbalance": "Theorem 2"}
COLORS = {"sam": "#1f77b4", "sharpbalance": "#d62728"}


def quick_setting() -> QuadraticSetting:
    """A configuration small enough for tests: 300×30 training data, 8 data sets × 20 initialisations."""
    return QuadraticSetting(train_samples=300, test_samples=100, input_dim=30, datasets=8, initializations=20,
                            partitions=10)


@dataclass(frozen=True)
class _Panel:
    """One axes: which methods, which (k, η, ρ) points, and what varies along a line."""

    title: str
    methods: tuple[str, ...]
    points: tuple[tuple[int, float, float], ...]
    along: Literal["rho", "iterations"] = "rho"


def _grid(low: float, high: float, count: int) -> list[float]:
    return [round(low + (high - low) * i / (count - 1), 10) for i in range(count)]


def _panels(figure: str, quick: bool) -> tuple[str, list[_Panel]]:
    """The title and panels of a figure (App. C.3 grids; smaller ones when ``quick``)."""
    if figure == "2":
        rhos = _grid(0.0, 1.0, 5 if quick else 11)
        return ("Theorem 1 against simulation (SAM), k = 4, η = 0.1",
                [_Panel("SAM", ("sam",), tuple((4, 0.1, rho) for rho in rhos))])
    if figure == "1b":
        rhos = _grid(0.0, 1.0, 3 if quick else 5)
        ks = (1, 4, 16) if quick else (1, 2, 4, 8, 16, 32)
        return ("Sharpness-diversity trade-off: SAM (Theorem 1) and SharpBalance (Theorem 2), η = 0.3",
                [_Panel("lines: ρ from 0 to 1 for each k", ("sam", "sharpbalance"),
                        tuple((k, 0.3, rho) for k in ks for rho in rhos))])
    if figure == "9":
        rhos = _grid(1.0, 0.4, 3 if quick else 7)
        ks = (1, 5, 10, 15) if quick else tuple(range(1, 16))
        return ("Theorem 2 against simulation (SharpBalance), η = 0.3",
                [_Panel("(a) ρ from 1.0 to 0.4, k = 8", ("sharpbalance",), tuple((8, 0.3, rho) for rho in rhos)),
                 _Panel("(b) k from 1 to 15, ρ = 0.5", ("sharpbalance",), tuple((k, 0.3, 0.5) for k in ks),
                        along="iterations")])
    if figure in ("10", "11"):
        rhos = _grid(0.5, 0.3, 3 if quick else 5)
        method, ks, etas = (("sam", (2, 4, 8), (0.1, 0.05, 0.01)) if figure == "10"
                            else ("sharpbalance", (4, 8, 12), (0.5, 0.3, 0.1)))
        if quick:
            ks, etas = ks[::2], etas[::2]
        return (f"{THEOREMS[method]} against simulation ({METHOD_NAMES[method]}), ρ from 0.5 to 0.3",
                [_Panel(f"k = {k}, η = {eta}", (method,), tuple((k, eta, rho) for rho in rhos))
                 for k in ks for eta in etas])
    raise InputError(f"unknown figure {figure!r}; choose one of {', '.join(FIGURES)}")


def _theorem_units(value_in_paper_units: float, setting: QuadraticSetting) -> Fraction:
    """η or ρ for ``f = ½‖A(θ−θ*)‖²`` from the value for ``f·d_in/n_tr``: multiply by ``d_in/n_tr``."""
    return Fraction(repr(float(value_in_paper_units))) / setting.ratio


def theory_table(figure: str, *, quick: bool = False, seed: int = 0,
                 setting: QuadraticSetting | None = None) -> pd.DataFrame:
    """The points of a figure as a long table: one row per (panel, method, k, η, ρ, source, quantity).

    ``source`` is ``"theory"`` (quantities ``diversity``, ``sharpness_upper`` and, for Theorem 1,
    ``sharpness_lower`` and ``sharpness_lower_printed`` — the paper's printed Jensen-gap term) or
    ``"simulation"`` (``diversity`` and ``sharpness`` with their standard errors). All points of a
    figure share one draw of data sets, teachers and initialisations (``seed``).
    """
    title, panels = _panels(figure, quick)
    if setting is None:
        setting = quick_setting() if quick else QuadraticSetting()
    problems = draw_problems(setting, seed=seed)
    context = {"figure": figure, "train_samples": setting.train_samples, "test_samples": setting.test_samples,
               "input_dim": setting.input_dim, "datasets": setting.datasets,
               "initializations": setting.initializations, "partitions": setting.partitions,
               "init_std": setting.init_std, "teacher_norm": setting.teacher_norm,
               "sharpness_radius": setting.sharpness_radius, "seed": seed}
    rows = []
    for panel in panels:
        for method in panel.methods:
            for iterations, eta_paper, rho_paper in panel.points:
                eta, rho = _theorem_units(eta_paper, setting), _theorem_units(rho_paper, setting)
                point = {**context, "panel": panel.title, "along": panel.along, "method": method,
                         "theorem": THEOREMS[method], "iterations": iterations, "eta_paper": eta_paper,
                         "rho_paper": rho_paper, "eta": float(eta), "rho": float(rho)}
                if method == "sam":
                    prediction = theorem_1(setting, iterations=iterations, eta=eta, rho=rho)
                    printed = theorem_1(setting, iterations=iterations, eta=eta, rho=rho, jensen_gap="printed")
                    theory = {"diversity": prediction.diversity, "sharpness_upper": prediction.sharpness_upper,
                              "sharpness_lower": prediction.sharpness_lower,
                              "sharpness_lower_printed": printed.sharpness_lower}
                else:
                    prediction = theorem_2(setting, iterations=iterations, eta=eta, rho=rho)
                    theory = {"diversity": prediction.diversity, "sharpness_upper": prediction.sharpness_upper}
                for quantity, value in theory.items():
                    if value is None:  # no lower bound when n_tr < d_in
                        continue
                    rows.append({**point, "source": "theory", "quantity": quantity, "value": value,
                                 "standard_error": float("nan")})
                simulated = simulate_tradeoff(problems, iterations=iterations, eta=eta, rho=rho, method=method)
                rows.append({**point, "source": "simulation", "quantity": "diversity",
                             "value": simulated.diversity, "standard_error": simulated.diversity_standard_error})
                rows.append({**point, "source": "simulation", "quantity": "sharpness",
                             "value": simulated.sharpness, "standard_error": simulated.sharpness_standard_error})
    table = pd.DataFrame(rows)
    table.attrs["title"] = title
    return table


def _wide(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per point of ``source``, quantities as columns (values and standard errors)."""
    keys = ["panel", "along", "method", "iterations", "eta_paper", "rho_paper"]
    part = table[table["source"] == source]
    values = part.pivot_table(index=keys, columns="quantity", values="value", aggfunc="first")
    errors = part.pivot_table(index=keys, columns="quantity", values="standard_error", aggfunc="first",
                              dropna=False).add_suffix("_standard_error")
    return values.join(errors).reset_index()


def draw_theory_figure(table: pd.DataFrame, *, lower_bounds: bool = True, title: str | None = None):
    """The figure of a :func:`theory_table`, unsaved: per panel and method, the diversity against
    the sharpness bounds of Theorem 1 or 2 (lines: solid the sharpness upper bound, dashed the
    sharpness lower bound, drawn when ``lower_bounds``) and against the simulated sharpness
    (points with standard errors). ``title`` defaults to the table's own. Returns a
    :class:`matplotlib.figure.Figure`; one legend below the panels names every line once.
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    if title is None:
        title = table.attrs.get("title", "")
    panels = list(dict.fromkeys(table["panel"]))
    theory, simulation = _wide(table, "theory"), _wide(table, "simulation")
    columns = min(3, math.ceil(math.sqrt(len(panels))))
    rows = math.ceil(len(panels) / columns)
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        figure = Figure(figsize=(max(4.8 * columns, 8.0), 3.8 * rows + 1.2), layout="constrained")
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for axis in axes[len(panels):]:
            axis.set_visible(False)
        labelled = set()

        def label(text):
            if text in labelled:
                return None
            labelled.add(text)
            return text

        for axis, panel in zip(axes, panels):
            for method in dict.fromkeys(table.loc[table["panel"] == panel, "method"]):
                color, name, theorem = COLORS[method], METHOD_NAMES[method], THEOREMS[method]
                predicted = theory[(theory["panel"] == panel) & (theory["method"] == method)]
                along = predicted["along"].iloc[0]
                line_keys = ["iterations", "eta_paper"] if along == "rho" else ["rho_paper", "eta_paper"]
                order = "rho_paper" if along == "rho" else "iterations"
                for line_values, line in predicted.groupby(line_keys):
                    line = line.sort_values(order)
                    axis.plot(line["sharpness_upper"], line["diversity"], "-", color=color, linewidth=1.6,
                              label=label(f"{name}: {theorem}, sharpness upper bound"))
                    if lower_bounds and "sharpness_lower" in line and line["sharpness_lower"].notna().any():
                        axis.plot(line["sharpness_lower"], line["diversity"], "--", color=color, linewidth=1.2,
                                  label=label(f"{name}: {theorem}, sharpness lower bound"))
                    if len(predicted.groupby(line_keys)) > 1:
                        first = line.iloc[0]
                        axis.annotate(f"k={int(first['iterations'])}", (first["sharpness_upper"], first["diversity"]),
                                      textcoords="offset points", xytext=(4, 2), fontsize=7, color=color)
                simulated = simulation[(simulation["panel"] == panel) & (simulation["method"] == method)]
                axis.errorbar(simulated["sharpness"], simulated["diversity"],
                              xerr=simulated["sharpness_standard_error"], yerr=simulated["diversity_standard_error"],
                              fmt="o", markersize=4, color=color, markerfacecolor="white", linewidth=1,
                              label=label(f"{name}: simulation"))
            axis.set_title(panel, fontsize=10)
            axis.set_xlabel("sharpness κ")
            axis.set_ylabel("diversity D (test-output variance)")
        setting = table.iloc[0]
        figure.suptitle(f"{title}\n{setting['train_samples']}×{setting['input_dim']} training data, "
                        f"{setting['datasets']} data sets × {setting['initializations']} initialisations, "
                        f"ρ0 = {setting['sharpness_radius']}; η, ρ in the paper's units", fontsize=10)
        figure.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                      ncol=min(3, len(labelled)), fontsize=8, frameon=False)
    return figure


def theory_figure(figure: Literal["1b", "2", "9", "10", "11"], out_dir, quick: bool = False,
                  seed: int = 0) -> list[Path]:
    """Simulate and plot one figure; returns the paths of its PNG, SVG and CSV (in that order).

    ``quick=True`` uses :func:`quick_setting` and shorter sweeps: seconds instead of minutes.
    """
    if figure not in FIGURES:
        raise InputError(f"unknown figure {figure!r}; choose one of {', '.join(FIGURES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a folder; pass a folder for the figures")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = theory_table(figure, quick=quick, seed=seed)
    stem = out_dir / f"theory-figure-{figure}"
    png, svg, csv = stem.with_suffix(".png"), stem.with_suffix(".svg"), stem.with_suffix(".csv")
    table.to_csv(csv, index=False)
    drawn = draw_theory_figure(table, lower_bounds=figure != "1b")
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "sharpdiv-theory"}):  # the same SVG bytes on every run
        drawn.savefig(png, dpi=150)
        drawn.savefig(svg, metadata={"Date": None})
    return [png, svg, csv]


@dataclass(frozen=True)
class MatchedSharpnessFinding:
    """Whether SharpBalance reaches a higher diversity than SAM at the same sharpness.

    ``verdict``: ``"higher"`` / ``"lower"`` when SharpBalance's diversity is above / below SAM's at
    every matched point, ``"mixed"`` otherwise, ``"no overlap"`` when no SharpBalance point lies in
    SAM's range of sharpness, ``"not comparable"`` when the table lacks one of the two methods.
    """

    source: str
    matched_points: int
    sharpbalance_higher: int
    median_diversity_ratio: float
    verdict: Literal["higher", "lower", "mixed", "no overlap", "not comparable"]
    statement: str


def _frontier(points: pd.DataFrame) -> pd.DataFrame:
    """The trade-off frontier: the points, sorted by sharpness, whose diversity is the largest among
    all points at most as sharp (the most diversity reachable at that sharpness or less)."""
    points = points.sort_values(["sharpness", "diversity"], ascending=[True, False])
    best = points["diversity"].cummax()
    return points[points["diversity"] >= best]


def diversity_at_matched_sharpness(table, source: Literal["simulation", "theory"] = "simulation"
                                   ) -> MatchedSharpnessFinding:
    """Compare SharpBalance's and SAM's diversity at matched sharpness.

    ``table`` is a :func:`theory_table` (or its CSV path). For each method the points of all its
    (k, η, ρ) settings are reduced to their frontier (most diversity at a given sharpness or less);
    SAM's frontier is interpolated linearly in sharpness; every SharpBalance frontier point inside
    SAM's range of sharpness is compared with it. ``source="theory"`` uses the sharpness upper
    bounds of Theorems 1 and 2 (as the paper's Fig. 1b does). This reports a result; it tunes nothing.
    """
    if not isinstance(table, pd.DataFrame):
        table = pd.read_csv(table)
    if source not in ("simulation", "theory"):
        raise InputError(f"source must be 'simulation' or 'theory', got {source!r}")
    wide = _wide(table, source)
    if source == "theory":
        wide = wide.rename(columns={"sharpness_upper": "sharpness"})
    methods = set(wide["method"])
    if not {"sam", "sharpbalance"} <= methods:
        return MatchedSharpnessFinding(source, 0, 0, float("nan"), "not comparable",
                                       "needs both SAM and SharpBalance points (figure 1b has them)")
    sam = _frontier(wide[wide["method"] == "sam"])
    sharpbalance = _frontier(wide[wide["method"] == "sharpbalance"])
    low, high = sam["sharpness"].min(), sam["sharpness"].max()
    inside = sharpbalance[(sharpbalance["sharpness"] >= low) & (sharpbalance["sharpness"] <= high)]
    what = "simulated" if source == "simulation" else "predicted (sharpness upper bounds)"
    if inside.empty:
        return MatchedSharpnessFinding(source, 0, 0, float("nan"), "no overlap",
                                       f"{what}: no SharpBalance point lies in SAM's sharpness range "
                                       f"[{low:.4g}, {high:.4g}]; the two cannot be compared at matched sharpness")
    sam_diversity = np.interp(inside["sharpness"].to_numpy(float), sam["sharpness"].to_numpy(float),
                              sam["diversity"].to_numpy(float))
    ratios = inside["diversity"].to_numpy(float) / sam_diversity
    higher = int((ratios > 1).sum())
    matched = len(ratios)
    verdict = "higher" if higher == matched else "lower" if higher == 0 else "mixed"
    median = float(np.median(ratios))
    statement = (f"{what}: SharpBalance's diversity exceeds SAM's at {higher} of {matched} matched sharpness "
                 f"levels (median ratio {median:.3g}) -> {verdict}")
    return MatchedSharpnessFinding(source, matched, higher, median, verdict, statement)

