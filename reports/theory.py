"""Theory against simulation: the figures of SharpBalance §3 and App. C.3 (Lu et al., NeurIPS 2024).

Reports never recompute: :mod:`ensembles.studies.theory` simulates a figure's points and stores them
as a long-format CSV (one row per point and quantity); this module draws the figure from that
stored table (:func:`draw_theory_figure`, :func:`write_theory_figure`) and reads findings from it
(:func:`diversity_at_matched_sharpness`). Per panel and method, the diversity is plotted against
the sharpness as Theorems 1 and 2 predict them (lines) and as simulated (points with standard
errors over data sets). The figures and their grids are listed in :mod:`ensembles.studies.theory`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ensembles.runs.files import atomic_path
from ensembles.studies.theory import FIGURES, METHOD_NAMES, THEOREMS, figure_title
from landscape.errors import InputError

__all__ = [
    "MatchedSharpnessFinding",
    "diversity_at_matched_sharpness",
    "draw_theory_figure",
    "read_theory_table",
    "write_theory_figure",
]

COLORS = {"sam": "#1f77b4", "sharpbalance": "#d62728"}


def _wide(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """One row per point of ``source``, quantities as columns (values and standard errors)."""
    keys = ["panel", "along", "method", "iterations", "eta_paper", "rho_paper"]
    part = table[table["source"] == source]
    values = part.pivot_table(index=keys, columns="quantity", values="value", aggfunc="first")
    errors = part.pivot_table(index=keys, columns="quantity", values="standard_error", aggfunc="first",
                              dropna=False).add_suffix("_standard_error")
    return values.join(errors).reset_index()


def draw_theory_figure(table: pd.DataFrame, *, lower_bounds: bool = True, title: str | None = None):
    """The figure of a :func:`ensembles.studies.theory.theory_table`, unsaved: per panel and method, the diversity against
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


def read_theory_table(path) -> pd.DataFrame:
    """A table stored by :func:`ensembles.studies.theory.write_theory_table`, with its figure's title."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a theory table; write it first with sharpdiv theory --figure F --out DIR")
    table = pd.read_csv(path)
    missing = {"figure", "panel", "method", "source", "quantity", "value"} - set(table.columns)
    if missing or table.empty:
        raise InputError(f"{path} is not a theory table (missing {', '.join(sorted(missing)) or 'rows'}); "
                         "write it again with sharpdiv theory --figure F --out DIR")
    figure = str(table["figure"].iloc[0])
    if figure not in FIGURES:
        raise InputError(f"{path}: unknown figure {figure!r}; write it again with sharpdiv theory")
    table["figure"] = figure  # "2" stays the string it was written as, not the integer 2
    table.attrs["title"] = figure_title(figure)
    return table


def write_theory_figure(table_path) -> list[Path]:
    """Draw the figure of a stored theory table beside it; returns the paths of its PNG and SVG.

    ``table_path`` is ``DIR/theory-figure-<F>.csv``; the figure goes to ``DIR/theory-figure-<F>.png``
    and ``.svg`` (atomically), with the sharpness lower bounds drawn except for figure 1b.
    """
    table_path = Path(table_path)
    table = read_theory_table(table_path)
    drawn = draw_theory_figure(table, lower_bounds=table["figure"].iloc[0] != "1b")
    png, svg = table_path.with_suffix(".png"), table_path.with_suffix(".svg")
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "sharpdiv-theory"}):  # the same SVG bytes on every run
        with atomic_path(png) as temporary:
            drawn.savefig(temporary, dpi=150, format="png")
        with atomic_path(svg) as temporary:
            drawn.savefig(temporary, metadata={"Date": None}, format="svg")
    return [png, svg]


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

    ``table`` is a :func:`ensembles.studies.theory.theory_table` (or its stored CSV's path). For each method the points of all its
    (k, η, ρ) settings are reduced to their frontier (most diversity at a given sharpness or less);
    SAM's frontier is interpolated linearly in sharpness; every SharpBalance frontier point inside
    SAM's range of sharpness is compared with it. ``source="theory"`` uses the sharpness upper
    bounds of Theorems 1 and 2 (as the paper's Fig. 1b does). This reports a result; it tunes nothing.
    """
    if not isinstance(table, pd.DataFrame):
        table = read_theory_table(table)
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

