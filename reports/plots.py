"""Figures from stored results: the sharpness–diversity trade-off and the views around it.

Every function reads the long table of :func:`reports.collect.collect`, draws with matplotlib's
object API (no pyplot state, no display; Agg canvas) in a seaborn style, writes PNG and SVG into
``directory`` and returns :class:`Figures`: the written paths and the figures themselves (so their
axes can be inspected), or no paths and the reason when the rows it needs are absent.

Figures (SharpBalance, NeurIPS 2024):

- :func:`plot_tradeoff` — sharpness vs diversity on log–log axes, one marker per ensemble, colour =
  EIR or accuracy, marker shape = group, with each group's fitted power law and β with its
  t interval (Figs. 1c, 3–5, 12);
- :func:`plot_method_comparison` — bars of mean member accuracy with the ensemble's improvement on
  top, or its shortfall marked in red (Fig. 7);
- :func:`plot_severity` — accuracy and EIR against corruption severity (Tables 2–4 as curves);
- :func:`plot_corruptions` — accuracy and DER against severity, one panel per corruption;
- :func:`plot_ensemble_size` — accuracy and EIR against the number of members (Fig. 8);
- :func:`plot_reliability` — reliability diagrams from the stored bins, pooled over runs;
- :func:`plot_barriers`, :func:`plot_interpolation`, :func:`plot_plane` — loss barriers between
  members, the interpolation curves and the loss plane through three members, per run; barriers
  and curves without and with permutation alignment side by side when both are stored; the plane
  marks the three members where their positions are stored;
- :func:`plot_density` — the Hessian eigenvalue density of each member, per run;
- :func:`plot_barrier_vs_eir` — mean pairwise barrier after alignment against EIR, one marker per
  run (Lion et al., "How good is a single basin?": does the gain come from several basins?).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullFormatter

from ensembles.runs.files import atomic_path
from reports.collect import (SharpnessSpec, barriers_per_run, diversity_description, diversity_metric,
                             group_labels, group_order, per_corruption, per_run, tradeoff_points,
                             with_alignment)
from reports.tradeoff import BetaFit, fits_by_group

__all__ = [
    "Figures",
    "plot_barrier_vs_eir",
    "plot_barriers",
    "plot_corruptions",
    "plot_density",
    "plot_ensemble_size",
    "plot_interpolation",
    "plot_method_comparison",
    "plot_plane",
    "plot_reliability",
    "plot_severity",
    "plot_tradeoff",
    # shared by the report's other figures
    "MARKERS",
    "group_palette",
    "label_log_axis",
    "new_figure",
    "plot_style",
    "save_figure",
    "skipped",
]

FORMATS = ("png", "svg")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_WHERE = {"test": "clean test data", "ood": "corrupted data"}


@dataclass(frozen=True)
class Figures:
    """What a plot function wrote: ``paths`` (PNG and SVG of each figure) and the ``figures``; or no
    paths and the ``reason`` it was skipped."""

    paths: tuple[Path, ...] = ()
    figures: tuple[Figure, ...] = field(default=(), repr=False)
    reason: str | None = None


# -- helpers every figure of the report uses (reports.correlation and reports.single_basin too) -----

def skipped(reason: str) -> Figures:
    """What a plot function returns when it draws nothing: no paths, and the ``reason``."""
    return Figures(reason=reason)


@contextlib.contextmanager
def plot_style():
    """The report's seaborn style (white grid, notebook context) inside the block."""
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
        yield


def new_figure(rows: int = 1, columns: int = 1, width: float = 5.5, height: float = 4.2, **options):
    """A figure (object API, no pyplot state) and its ``(rows, columns)`` array of axes, each panel
    ``width`` × ``height`` inches."""
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False, **options)
    return figure, axes


def save_figure(figure: Figure, directory: Path, stem: str, formats: Sequence[str]) -> list[Path]:
    """``figure`` as ``directory/stem.<format>`` for each format (atomic writes); the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for extension in formats:
        path = directory / f"{stem}.{extension}"
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format=extension, dpi=150, bbox_inches="tight")
        paths.append(path)
    return paths


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def group_palette(groups: Sequence[str]) -> dict[str, tuple]:
    """One colour-blind-safe colour per group, in the given order."""
    return dict(zip(groups, sns.color_palette("colorblind", max(len(groups), 1))))


def _run_groups(results: pd.DataFrame, group_by: str) -> pd.Series:
    return group_labels(results.drop_duplicates("path").set_index("path"), group_by)


def _mean_and_std(values: pd.DataFrame | pd.Series, groups: pd.Series):
    grouped = values.groupby(groups.reindex(values.index))
    return grouped.mean(), grouped.std(ddof=1)


def _has(results: pd.DataFrame, metric_pattern: str) -> bool:
    return not results.empty and "metric" in results and bool(results["metric"].str.fullmatch(metric_pattern).any())


# ----------------------------------------------------------------------------------------------
# the trade-off


def label_log_axis(axis, limits) -> None:
    """Major ticks a reader can read off a log axis whose view spans ``limits``: 1, 2, 5 per decade
    when that gives at least three ticks, else (a range narrower than about a factor of five, where
    a log axis is nearly linear) evenly spaced round numbers; labels in plain ``%g`` notation."""
    low, high = sorted(limits)
    per_decade = LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    ticks = per_decade.tick_values(low, high)
    if np.count_nonzero((ticks >= low) & (ticks <= high)) >= 3:
        axis.set_major_locator(per_decade)
    else:
        axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())


def plot_tradeoff(results: pd.DataFrame, directory: str | os.PathLike, *, group_by: str = "method",
                  sharpness: SharpnessSpec | str = "sharpness/worst/l2/adaptive@0.5", diversity: str = "der",
                  on: str = "ood", colour: str = "eir", combine: str | None = "probs",
                  name: str | None = None, formats: Sequence[str] = FORMATS) -> Figures:
    """Sharpness (members' mean) against diversity (ensemble) on log–log axes, with β per group.

    ``colour`` is ``eir``, ``member_accuracy`` or ``ensemble_accuracy``, all on the same data as the
    diversity (``on``). β is the slope of ``log D = α + β log S`` over the group's ensembles
    (:func:`reports.tradeoff.fit_beta`), shown whatever its sign; groups with fewer than 3
    ensembles get no line, and the legend says why.
    """
    spec = sharpness if isinstance(sharpness, SharpnessSpec) else SharpnessSpec.parse(sharpness)
    metric = diversity_metric(diversity)
    points = tradeoff_points(results, sharpness=spec, diversity=diversity, on=on, combine=combine, group_by=group_by)
    if points.empty:
        return skipped(f"no run has both {spec} and {metric} on {_WHERE[on]}")
    if colour not in ("eir", "member_accuracy", "ensemble_accuracy"):
        raise ValueError(f"colour {colour!r}: use eir, member_accuracy or ensemble_accuracy")
    scale = 1 if colour == "eir" else 100
    colour_values = points[colour] * scale
    colour_label = {"eir": "Ensemble improvement rate (EIR)", "member_accuracy": "Mean member accuracy (%)",
                    "ensemble_accuracy": "Ensemble accuracy (%)"}[colour] + f", {_WHERE[on]}"
    positive = points[(points["sharpness"] > 0) & (points["diversity"] > 0)]
    fits = fits_by_group(positive["sharpness"], positive["diversity"], positive["group"])
    runs = results.drop_duplicates("path").set_index("path")
    rhos = pd.to_numeric(runs["run.rho"], errors="coerce").reindex(points.index) if "run.rho" in runs else \
        pd.Series(np.nan, index=points.index)
    groups = group_order(points["group"])
    palette = group_palette(groups)
    colour_map = matplotlib.colormaps["coolwarm"].with_extremes(bad="lightgrey")
    finite = colour_values[np.isfinite(colour_values)]
    norm = matplotlib.colors.Normalize(*(finite.min(), finite.max())) if len(finite) else None
    if norm is not None and norm.vmin == norm.vmax:
        norm = matplotlib.colors.Normalize(norm.vmin - 0.5 * (abs(norm.vmin) or 1) * 0.01,
                                           norm.vmax + 0.5 * (abs(norm.vmax) or 1) * 0.01)
    with plot_style():
        figure, axes = new_figure(width=6.5, height=4.8)
        ax = axes[0, 0]
        handles = []
        for index, group in enumerate(groups):
            chosen = points["group"] == group
            marker = MARKERS[index % len(MARKERS)]
            ax.scatter(points.loc[chosen, "sharpness"], points.loc[chosen, "diversity"],
                                    c=colour_values[chosen] if norm is not None else [palette[group]],
                                    cmap=colour_map if norm is not None else None, norm=norm, marker=marker,
                                    s=60, edgecolors=[palette[group]], linewidths=1.5, zorder=3,
                                    plotnonfinite=True)
            for x, y, rho in zip(points.loc[chosen, "sharpness"], points.loc[chosen, "diversity"], rhos[chosen]):
                if np.isfinite(rho):  # the training radius of a SAM/SharpBalance ensemble names its point
                    ax.annotate(f"ρ={rho:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize="x-small",
                                color=palette[group])
            fit = fits.get(group, "no positive values")
            if isinstance(fit, BetaFit):
                span = np.geomspace(points.loc[chosen, "sharpness"].min(), points.loc[chosen, "sharpness"].max(), 50)
                ax.plot(span, fit.line(span), color=palette[group], linestyle="--", linewidth=1.5, zorder=2)
                text = f"{group}: β = {fit.beta:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}], n = {fit.n}"
                if fit.verdict:  # the reader must not take a slope drawn through noise for a finding
                    text += f" ({fit.verdict})"
            else:
                text = f"{group}: β not fitted ({fit})"
            handles.append(Line2D([], [], color=palette[group], linestyle="--" if isinstance(fit, BetaFit) else "",
                                  marker=marker, markerfacecolor="white", markeredgecolor=palette[group],
                                  markersize=8, label=text))
        ax.set_xscale("log")
        ax.set_yscale("log")
        label_log_axis(ax.xaxis, ax.get_xlim())
        label_log_axis(ax.yaxis, ax.get_ylim())
        ax.set_xlabel(f"Sharpness, members' mean (log scale)\n{spec.description}")
        ax.set_ylabel(f"Diversity (log scale)\n{diversity_description(metric, on)}")
        ax.set_title("Sharpness–diversity trade-off")
        # Below the axes, outside the data: the long β labels must never hide a marker, and beside
        # the colour bar they would squeeze the axes.
        figure.legend(handles=handles, title=f"{group_by}: slope β [95% t interval]",
                      loc="outside lower center", fontsize="small", title_fontsize="small")
        if norm is not None:
            figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=colour_map), ax=ax, label=colour_label)
    stem = name or f"tradeoff-{colour.replace('_', '-')}"
    return Figures(paths=tuple(save_figure(figure, Path(directory), stem, formats)), figures=(figure,))


# ----------------------------------------------------------------------------------------------
# methods, severities, ensemble sizes


def plot_method_comparison(results: pd.DataFrame, directory: str | os.PathLike, *, group_by: str = "method",
                           combine: str | None = "probs", name: str = "methods",
                           formats: Sequence[str] = FORMATS) -> Figures:
    """Bars per group: the mean member accuracy (hatched) and the ensemble's change from it, on clean
    (ID) and corrupted (OOD) data; group means over runs, error bars one std of the ensemble
    accuracy at the ensemble's accuracy (SharpBalance Fig. 7).

    An improvement is a solid block from the members' mean up to the ensemble's accuracy. An
    ensemble below its members is a red cross-hatched block from the ensemble's accuracy up to the
    members' mean, over the member bar: the bar still ends at the members' mean, and the red part is
    what the ensemble lost, so no bar ever reaches a height no measurement has."""
    panels = []
    for on in ("test", "ood"):
        members = 100 * per_run(results, "accuracy", scope="members", on=on, combine=combine)
        ensemble = 100 * per_run(results, "accuracy", on=on, combine=combine)
        both = pd.concat({"members": members, "ensemble": ensemble}, axis=1).dropna()
        if not both.empty:
            panels.append((on, both))
    if not panels:
        return skipped("no run has member and ensemble accuracy rows: run `sharpdiv evaluate RUN`")
    groups_of_runs = _run_groups(results, group_by)
    with plot_style():
        figure, axes = new_figure(1, len(panels), width=4.8)
        for ax, (on, both) in zip(axes[0], panels):
            mean, std = _mean_and_std(both, groups_of_runs)
            order = [g for g in group_order(groups_of_runs) if g in mean.index]
            mean, std = mean.reindex(order), std.reindex(order)
            palette = group_palette(order)
            positions = np.arange(len(order))
            colours = [palette[g] for g in order]
            improvement = mean["ensemble"] - mean["members"]
            gain, loss = (improvement > 0).to_numpy(), (improvement < 0).to_numpy()
            ax.bar(positions, mean["members"], color=colours, alpha=0.55, hatch="//", edgecolor="black",
                   label="mean member")
            ax.bar(positions[gain], improvement[gain], bottom=mean["members"][gain],
                   color=[palette[g] for g in improvement.index[gain]], edgecolor="black",
                   label="ensemble improvement")
            if loss.any():
                ax.bar(positions[loss], -improvement[loss], bottom=mean["ensemble"][loss], color="mistyrose",
                       hatch="xx", edgecolor="crimson", label="ensemble below members")
            spread = std["ensemble"].fillna(0)
            ax.errorbar(positions, mean["ensemble"], yerr=spread, fmt="none", ecolor="black", capsize=4)
            for x, top, low, change, error in zip(positions, mean["ensemble"], mean["members"], improvement, spread):
                ax.annotate(f"{top:.2f}\n({'+' if change >= 0 else '−'}{abs(change):.2f})",
                            (x, max(top, low) + error),
                            textcoords="offset points", xytext=(0, 4), ha="center", va="bottom", fontsize="small")
            # Bars start at 0: a bar's height is read as its value, and a cut axis would turn a
            # point of accuracy into half the chart. The numbers above the bars give the differences.
            high = float(mean[["members", "ensemble"]].max().max()) + float(spread.max())
            ax.set_ylim(0.0, high + 14.0)  # room above the tallest bar for its numbers
            ax.set_yticks(range(0, 101, 20))
            ax.set_xticks(positions, order)
            ax.set_xlabel(group_by)
            ax.set_ylabel(f"Accuracy on {_WHERE[on]} (%)")
            ax.set_title(f"{'ID' if on == 'test' else 'OOD'}: members and ensemble change")
            ax.legend(loc="lower right", fontsize="small")
    return Figures(paths=tuple(save_figure(figure, Path(directory), name, formats)), figures=(figure,))


def plot_severity(results: pd.DataFrame, directory: str | os.PathLike, *, group_by: str = "method",
                  combine: str | None = "probs", name: str = "severity",
                  formats: Sequence[str] = FORMATS) -> Figures:
    """Accuracy (ensemble solid, mean member dashed) and EIR against corruption severity, severity 0
    being clean test data; group means over runs with one-std bars."""
    ensemble = per_run(results, "accuracy", on="ood", combine=combine, by_severity=True)
    if ensemble.empty:
        return skipped("no run has corrupted-data accuracy rows: run `sharpdiv evaluate RUN --corruptions all`")
    members = per_run(results, "accuracy", scope="members", on="ood", combine=combine, by_severity=True)
    eir = per_run(results, "eir", on="ood", combine=combine, by_severity=True)

    def with_clean(by_severity: pd.DataFrame, clean: pd.Series) -> pd.DataFrame:
        return pd.concat([clean.rename(0), by_severity], axis=1) if not by_severity.empty else by_severity

    curves = {
        "ensemble": 100 * with_clean(ensemble, per_run(results, "accuracy", on="test", combine=combine)),
        "mean member": 100 * with_clean(members, per_run(results, "accuracy", scope="members", on="test",
                                                         combine=combine)),
        "eir": with_clean(eir, per_run(results, "eir", on="test", combine=combine)),
    }
    groups_of_runs = _run_groups(results, group_by)
    order = group_order(groups_of_runs)
    palette = group_palette(order)
    with plot_style():
        figure, axes = new_figure(1, 2, width=5.2)
        accuracy_ax, eir_ax = axes[0]
        for curve, ax, style in (("ensemble", accuracy_ax, "-"), ("mean member", accuracy_ax, "--"),
                                 ("eir", eir_ax, "-")):
            table = curves[curve]
            if table.empty:
                continue
            mean, std = _mean_and_std(table, groups_of_runs)
            for group in [g for g in order if g in mean.index]:
                row = mean.loc[group].dropna()
                label = group if curve == "eir" else f"{group}, {curve}"
                ax.errorbar(row.index.astype(int), row.values, yerr=std.loc[group].reindex(row.index).fillna(0).values,
                            color=palette[group], linestyle=style, marker="o", capsize=3, label=label)
        for ax in (accuracy_ax, eir_ax):
            ax.set_xlabel("Corruption severity (0 = clean test data)")
            ax.set_xticks(range(0, 6))
            if ax.get_legend_handles_labels()[0]:  # one-member runs have no EIR curve to name
                ax.legend(title=group_by, fontsize="small")
        accuracy_ax.set_ylabel("Accuracy (%)")
        accuracy_ax.set_title("Accuracy against corruption severity")
        eir_ax.set_ylabel("Ensemble improvement rate (EIR)")
        eir_ax.set_title("EIR against corruption severity")
    return Figures(paths=tuple(save_figure(figure, Path(directory), name, formats)), figures=(figure,))


def plot_corruptions(results: pd.DataFrame, directory: str | os.PathLike, *, group_by: str = "method",
                     combine: str | None = "probs", name: str = "corruptions",
                     formats: Sequence[str] = FORMATS) -> Figures:
    """One panel per corruption: the ensemble's accuracy (first figure) and DER (second) against
    severity, one line per group (mean over runs, one-std bars). Accuracy panels show the chance
    level 1/classes when the runs agree on the number of classes: a corruption that brings every
    severity to chance is visible at once, where the mean over corruptions hides it."""
    groups_of_runs = _run_groups(results, group_by)
    order = group_order(groups_of_runs)
    palette = group_palette(order)
    firsts = results.drop_duplicates("path").set_index("path") if not results.empty else results
    classes = firsts["run.num_classes"].dropna().unique() if "run.num_classes" in firsts else []
    paths = []
    figures = []
    for metric, label, scale in (("accuracy", "Ensemble accuracy (%)", 100), ("der", "DER", 1)):
        values = per_corruption(results, metric, combine=combine)
        if values.empty:
            continue
        values = values.assign(group=groups_of_runs.reindex(values["path"]).to_numpy(),
                               value=scale * values["value"].astype(float))
        corruptions = sorted(values["corruption"].unique())
        columns = min(5, len(corruptions))
        rows = -(-len(corruptions) // columns)
        with plot_style():
            figure, axes = new_figure(rows, columns, width=3.2, height=2.8, sharex=True, sharey=True)
            for ax in axes.flat[len(corruptions):]:
                ax.set_visible(False)
            for ax, corruption in zip(axes.flat, corruptions):
                chosen = values[values["corruption"] == corruption]
                statistics = chosen.groupby(["group", "severity"])["value"].agg(["mean", "std"])
                for group in [g for g in order if g in statistics.index.get_level_values(0)]:
                    curve = statistics.loc[group]
                    ax.errorbar(curve.index, curve["mean"], yerr=curve["std"].fillna(0), color=palette[group],
                                marker="o", capsize=2, label=group)
                if metric == "accuracy" and len(classes) == 1:
                    ax.axhline(100 / float(classes[0]), color="grey", linestyle=":", label="chance")
                ax.set_title(corruption)
                ax.set_xticks(range(1, 6))
            for ax in axes[-1]:
                ax.set_xlabel("Severity")
            for ax in axes[:, 0]:
                ax.set_ylabel(label)
            if metric == "accuracy":
                for ax in axes.flat:
                    ax.set_ylim(0, 100)  # the distance to 0 and to chance is what the panel shows
            handles, labels = axes.flat[0].get_legend_handles_labels()
            figure.legend(handles, labels, title=group_by, loc="outside lower center", ncols=min(len(labels), 5),
                          fontsize="small")
            figure.suptitle(f"{label} per corruption against severity (mean ± std over runs)")
        paths += save_figure(figure, Path(directory), f"{name}-{metric}", formats)
        figures.append(figure)
    if not figures:
        return skipped("no run has corrupted-data rows: run `sharpdiv evaluate RUN --corruptions all`")
    return Figures(paths=tuple(paths), figures=tuple(figures))


def _sizes(results: pd.DataFrame, metric: str, on: str, combine: str | None) -> pd.DataFrame:
    """Per run, ``metric`` of the sub-ensemble of the first k members (columns k); the full
    ensemble counts as k = run.n_members where no ``ensemble@<M>`` row exists.

    k = 1 is the mean member where the run has member accuracy rows: its accuracy is the members'
    mean accuracy (the expected accuracy of one member), and its EIR is 0 by definition, since a
    single model's error is its members' mean error."""
    scopes = results.loc[results["scope"].str.fullmatch(r"ensemble@\d+"), "scope"].unique()
    columns = {int(scope.split("@")[1]): per_run(results, metric, scope=scope, on=on, combine=combine)
               for scope in scopes}
    table = pd.DataFrame(columns)
    full = per_run(results, metric, scope="ensemble", on=on, combine=combine)
    if "run.n_members" in results:
        sizes = results.drop_duplicates("path").set_index("path")["run.n_members"]
        for path, value in full.items():
            k = int(sizes.get(path, 0))
            if k >= 2 and (k not in table.columns or path not in table.index or pd.isna(table.loc[path, k])):
                table.loc[path, k] = value
    if metric in ("accuracy", "eir") and 1 not in table.columns and not table.dropna(how="all").empty:
        mean_member = per_run(results, "accuracy", scope="members", on=on, combine=combine)
        single = mean_member if metric == "accuracy" else 0.0 * mean_member
        table = table.join(single.rename(1), how="left")
    return table.reindex(sorted(table.columns), axis=1)


def plot_ensemble_size(results: pd.DataFrame, directory: str | os.PathLike, *, group_by: str = "method",
                       combine: str | None = "probs", name: str = "ensemble-size",
                       formats: Sequence[str] = FORMATS) -> Figures:
    """Ensemble accuracy and EIR against the number of members k, from the ``ensemble@<k>`` rows
    (SharpBalance Fig. 8), starting at k = 1, the mean member; columns ID and OOD, group means over
    runs with one-std bars."""
    if results.empty or not results["scope"].str.fullmatch(r"ensemble@\d+").any():
        return skipped("no run has sub-ensemble (ensemble@<k>) rows: run `sharpdiv evaluate RUN`")
    panels = [(on, metric, _sizes(results, metric, on, combine)) for on in ("test", "ood")
              for metric in ("accuracy", "eir")]
    used = [on for on in ("test", "ood") if any(not t.dropna(how="all").empty for o, _, t in panels if o == on)]
    groups_of_runs = _run_groups(results, group_by)
    order = group_order(groups_of_runs)
    palette = group_palette(order)
    with plot_style():
        figure, axes = new_figure(2, len(used), width=4.8, height=3.6)
        for column, on in enumerate(used):
            for row, metric in enumerate(("accuracy", "eir")):
                ax = axes[row, column]
                table = next(t for o, m, t in panels if o == on and m == metric)
                table = 100 * table if metric == "accuracy" else table
                if not table.empty:
                    mean, std = _mean_and_std(table, groups_of_runs)
                    for group in [g for g in order if g in mean.index]:
                        line = mean.loc[group].dropna()
                        ax.errorbar(line.index.astype(int), line.values,
                                    yerr=std.loc[group].reindex(line.index).fillna(0).values,
                                    color=palette[group], marker="o", capsize=3, label=group)
                    ax.legend(title=group_by, fontsize="small")
                ax.set_xlabel("Number of members k (k = 1: mean member)")
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
                ax.set_ylabel("Ensemble accuracy (%)" if metric == "accuracy" else "Ensemble improvement rate (EIR)")
                ax.set_title(f"{'Accuracy' if metric == 'accuracy' else 'EIR'} against ensemble size, {_WHERE[on]}")
    return Figures(paths=tuple(save_figure(figure, Path(directory), name, formats)), figures=(figure,))


# ----------------------------------------------------------------------------------------------
# calibration


def _latest_by(rows: pd.DataFrame, within: Sequence[str], setting: str, coordinates: Sequence[str]) -> pd.DataFrame:
    """Per group of ``within``: the rows with the newest value of ``setting``, one per coordinate."""
    if rows.empty:
        return rows
    cells = rows[list(within)].astype(object)
    key = cells.where(cells.notna(), "").astype(str).agg("|".join, axis=1)
    rows = rows.assign(_key=key).sort_values("created", kind="stable")
    if setting in rows:
        newest = rows.groupby("_key")[setting].last()
        rows = rows[rows[setting].astype(str) == rows["_key"].map(newest).astype(str)]
    return rows.drop_duplicates(["_key", "metric", *coordinates], keep="last")


def _newest_grid(rows: pd.DataFrame, index_columns: Sequence[str], location_columns: Sequence[str]) -> pd.DataFrame:
    """Per scope, the rows of the newest measurement of a computed grid (a spectral density, a loss
    plane): one settings (the grid columns apart) on one data; in it, one row per metric and grid
    index, or, for a measurement stored before grids had indices, per place (``location_columns``).
    The two kinds of rows are never drawn together: a point would appear twice."""
    if rows.empty:
        return rows
    grid = {*index_columns, *location_columns}
    measurement = pd.Series([json.dumps({k: v for k, v in json.loads(text).items() if k not in grid}, sort_keys=True)
                             for text in rows["settings"]], index=rows.index)
    for column in ("data", "dataset", "split"):
        if column in rows:
            measurement += "|" + rows[column].astype(object).where(rows[column].notna(), "").astype(str)
    indexed = rows[index_columns[0]].notna() if index_columns[0] in rows else pd.Series(False, index=rows.index)
    rows = rows.assign(_measurement=measurement, _indexed=indexed).sort_values("created", kind="stable")
    chosen = []
    for _, mine in rows.groupby("scope", sort=True):
        newest = mine[mine["_measurement"] == mine["_measurement"].iloc[-1]]
        if newest["_indexed"].any():
            chosen.append(newest[newest["_indexed"]].drop_duplicates(["metric", *index_columns], keep="last"))
        else:
            chosen.append(newest.drop_duplicates(["metric", *location_columns], keep="last"))
    return pd.concat(chosen).drop(columns=["_measurement", "_indexed"])


def _pooled_bins(rows: pd.DataFrame, groups_of_runs: pd.Series) -> pd.DataFrame:
    """Per (group, bin): the total count and the count-weighted sums of accuracy and confidence."""
    slices = rows[["dataset", "split", "corruption", "severity"]].astype(object)
    rows = rows.assign(**{c: slices[c].where(slices[c].notna(), "") for c in slices.columns},
                       bin=rows["bin"].astype(float).astype(int))
    wide = rows.pivot_table(index=["path", "dataset", "split", "corruption", "severity", "bin"],
                            columns="metric", values="value", aggfunc="last")
    wide = wide.reindex(columns=["reliability/count", "reliability/accuracy", "reliability/confidence"])
    count = wide["reliability/count"].fillna(0)
    # An empty bin stores NaN accuracy and confidence; its weight is 0 either way.
    weighted = pd.DataFrame({"count": count,
                             "accuracy": wide["reliability/accuracy"].fillna(0) * count,
                             "confidence": wide["reliability/confidence"].fillna(0) * count})
    weighted["group"] = weighted.index.get_level_values("path").map(groups_of_runs)
    pooled = weighted.groupby(["group", weighted.index.get_level_values("bin")]).sum()
    pooled.index.names = ["group", "bin"]
    n_bins = rows.assign(group=rows["path"].map(groups_of_runs)).groupby("group")["bin"].max() + 1
    pooled["n_bins"] = pooled.index.get_level_values("group").map(n_bins)
    return pooled


def plot_reliability(results: pd.DataFrame, directory: str | os.PathLike, *, group_by: str = "method",
                     combine: str | None = "probs", name: str = "reliability",
                     formats: Sequence[str] = FORMATS) -> Figures:
    """Reliability diagrams of the ensemble, one per group, pooled over its runs (and over the
    corrupted slices for OOD): a bin's accuracy and confidence are count-weighted means of the stored
    per-bin values, and the title carries the group's mean stored ECE."""
    rows = results[results["metric"].str.startswith("reliability/") & (results["scope"] == "ensemble")] \
        if "metric" in results else results
    if combine is not None and "combine" in rows:
        rows = rows[rows["combine"].isna() | (rows["combine"] == combine)]
    if rows.empty or "bin" not in rows:
        return skipped("no run has reliability-bin rows: run `sharpdiv evaluate RUN`")
    rows = _latest_by(rows, ["path", "dataset", "split", "corruption", "severity"], "n_bins", ["bin"])
    corrupted = rows["corruption"].notna()
    slices = {"test": rows[(rows["split"] == "test") & ~corrupted], "ood": rows[corrupted]}
    slices = {on: part for on, part in slices.items() if not part.empty}
    if not slices:
        return skipped("no reliability-bin rows on clean test or corrupted data")
    groups_of_runs = _run_groups(results, group_by)
    order = [g for g in group_order(groups_of_runs)
             if any(groups_of_runs.reindex(part["path"].unique()).eq(g).any() for part in slices.values())]
    palette = group_palette(order)
    with plot_style():
        figure, axes = new_figure(len(slices), len(order), width=3.8, height=3.8)
        for row, (on, part) in enumerate(slices.items()):
            pooled = _pooled_bins(part, groups_of_runs)
            ece = per_run(results, "ece", on=on, combine=combine)
            for column, group in enumerate(order):
                ax = axes[row, column]
                ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
                if group in pooled.index.get_level_values("group"):
                    bins = pooled.xs(group, level="group")
                    n_bins = int(bins["n_bins"].max())
                    filled = bins[bins["count"] > 0]
                    accuracy = filled["accuracy"] / filled["count"]
                    confidence = filled["confidence"] / filled["count"]
                    centres = (filled.index.astype(float) + 0.5) / n_bins
                    ax.bar(centres, accuracy, width=1 / n_bins, color=palette[group], alpha=0.7,
                           edgecolor="black", label="accuracy")
                    ax.bar(centres, confidence - accuracy, bottom=accuracy, width=1 / n_bins, color="none",
                           edgecolor="crimson", hatch="//", label="gap to confidence")
                mean_ece = ece.reindex(groups_of_runs[groups_of_runs == group].index).mean()
                suffix = f", ECE = {mean_ece:.3f}" if np.isfinite(mean_ece) else ""
                ax.set_title(f"{group} ({'ID' if on == 'test' else 'OOD'}){suffix}")
                ax.set_xlim(0, 1)
                ax.set_ylim(0, 1)
                ax.set_xlabel("Confidence (max. probability)")
                ax.set_ylabel("Accuracy")
                ax.legend(loc="upper left", fontsize="x-small")
    return Figures(paths=tuple(save_figure(figure, Path(directory), name, formats)), figures=(figure,))


# ----------------------------------------------------------------------------------------------
# connectivity: per run


def _pairs(scopes: pd.Series) -> pd.DataFrame:
    parts = scopes.str.extract(r"pair-(\d+)-(\d+)").astype(int)
    parts.columns = ["i", "j"]
    return parts


def _per_run_figures(results, metrics: str, reason: str, draw, directory, prefix, formats) -> Figures:
    if not _has(results, metrics):
        return skipped(reason)
    rows = results[results["metric"].str.fullmatch(metrics)]
    paths, figures = [], []
    for path, mine in rows.groupby("path", sort=True):
        label = str(mine["run_label"].iloc[0]) if "run_label" in mine else Path(path).name
        with plot_style():
            figure = draw(mine, label)
        if figure is not None:
            figures.append(figure)
            paths += save_figure(figure, Path(directory), f"{prefix}-{_file_stem(label)}", formats)
    if not paths:
        return skipped(reason)
    return Figures(paths=tuple(paths), figures=tuple(figures))


def plot_barriers(results: pd.DataFrame, directory: str | os.PathLike, *,
                  formats: Sequence[str] = FORMATS) -> Figures:
    """Per run: the symmetric matrix of loss barriers between members (zero diagonal) as a heatmap,
    one panel per stored alignment (no alignment first), on one colour scale."""
    def draw(rows: pd.DataFrame, label: str):
        rows = with_alignment(rows[rows["metric"] == "connectivity/barrier"])
        rows = _latest_by(rows, ["scope", "alignment"], "bn_mode", [])
        kinds = _alignment_order(rows["alignment"])
        pairs = _pairs(rows["scope"])
        size = int(max(pairs["i"].max(), pairs["j"].max())) + 1
        figure, axes = new_figure(1, len(kinds), width=1.2 * size + 3, height=1.1 * size + 2)
        top = float(np.nanmax(rows["value"].to_numpy(dtype=float), initial=0.0))
        for ax, kind in zip(axes[0], kinds):
            mine = rows[rows["alignment"] == kind]
            where = _pairs(mine["scope"])
            matrix = np.zeros((size, size))
            matrix[where["i"], where["j"]] = mine["value"].to_numpy()
            matrix[where["j"], where["i"]] = mine["value"].to_numpy()
            sns.heatmap(matrix, ax=ax, annot=True, fmt=".3g", cmap="rocket_r", square=True, vmin=0.0,
                        vmax=top if len(kinds) > 1 and top > 0 else None,
                        cbar_kws={"label": "Loss barrier (loss increase over the linear path)"})
            ax.set_xlabel("Member")
            ax.set_ylabel("Member")
            modes = ", ".join(sorted(mine["bn_mode"].dropna().astype(str).unique())) if "bn_mode" in mine else ""
            title = f"Loss barriers between members, {label}" + (f" (BN: {modes})" if modes else "")
            if len(kinds) > 1 or kind != "none":
                title += "\n" + _alignment_text(kind)
            ax.set_title(title)
        return figure

    return _per_run_figures(results, r"connectivity/barrier",
                            "no connectivity rows: run `sharpdiv connectivity RUN`", draw, directory,
                            "barriers", formats)


def plot_interpolation(results: pd.DataFrame, directory: str | os.PathLike, *,
                       formats: Sequence[str] = FORMATS) -> Figures:
    """Per run: loss and accuracy along the linear path θ(α) = (1 − α)θ_i + αθ_j of every pair;
    with alignment rows, each pair keeps its colour and the aligned path is dashed (dotted for
    activation matching) beside the unaligned one."""
    def draw(rows: pd.DataFrame, label: str):
        # α to 9 decimals: rows stored before α was computed exactly are an ulp off on some CPUs (one point)
        rows = with_alignment(rows).assign(alpha=lambda table: table["alpha"].astype(float).round(9))
        rows = _latest_by(rows, ["scope", "alignment"], "bn_mode", ["alpha"])
        figure, axes = new_figure(1, 2, width=4.8)
        colours = dict(zip(sorted(rows["scope"].unique()), sns.color_palette("tab10", rows["scope"].nunique())))
        styles = {"none": "-", "weight": "--", "activation": ":"}
        for ax, metric, unit in ((axes[0, 0], "connectivity/loss", "Loss (cross-entropy)"),
                                 (axes[0, 1], "connectivity/accuracy", "Accuracy (%)")):
            curve_rows = rows[rows["metric"] == metric]
            for (scope, kind), curve in curve_rows.groupby(["scope", "alignment"], sort=True):
                curve = curve.sort_values("alpha")
                scale = 100 if metric.endswith("accuracy") else 1
                name = scope.replace("pair-", "members ").replace("-", "–")
                ax.plot(curve["alpha"].astype(float), scale * curve["value"], marker="o", markersize=3,
                        color=colours[scope], linestyle=styles.get(kind, "-."),
                        label=name if kind == "none" else f"{name}, {kind}-aligned")
            ax.set_xlabel("Interpolation coefficient α")
            ax.set_ylabel(unit)
            ax.set_title(f"{unit.split(' (')[0]} along linear paths, {label}")
            if not curve_rows.empty:
                ax.legend(fontsize="small")
        return figure

    return _per_run_figures(results, r"connectivity/(loss|accuracy)",
                            "no interpolation rows: run `sharpdiv connectivity RUN`", draw, directory,
                            "interpolation", formats)


def plot_plane(results: pd.DataFrame, directory: str | os.PathLike, *,
               formats: Sequence[str] = FORMATS) -> Figures:
    """Per run: filled contours of loss and accuracy on the plane through members 0, 1, 2
    (coordinates u, v in the plane's orthonormal basis)."""
    def draw(rows: pd.DataFrame, label: str):
        rows = with_alignment(rows)
        kind = _alignment_order(rows["alignment"])[0]  # the unaligned plane when it is stored
        rows = _newest_grid(rows[rows["alignment"] == kind], ["u_index", "v_index"], ["u", "v"])
        members = rows[rows["scope"] != "ensemble"]  # the members' own positions (older runs lack them)
        rows = rows[rows["scope"] == "ensemble"]
        figure, axes = new_figure(1, 2, width=5.0)
        for ax, metric, unit, colours in ((axes[0, 0], "plane/loss", "Loss (cross-entropy)", "viridis"),
                                          (axes[0, 1], "plane/accuracy", "Accuracy (%)", "magma")):
            surface = rows[rows["metric"] == metric]
            if surface.empty:
                ax.set_visible(False)
                continue
            grid = surface.pivot_table(index="v", columns="u", values="value", aggfunc="last")
            scale = 100 if metric.endswith("accuracy") else 1
            filled = ax.contourf(grid.columns.astype(float), grid.index.astype(float), scale * grid.to_numpy(),
                                 levels=15, cmap=colours)
            figure.colorbar(filled, ax=ax, label=unit)
            at = members[members["metric"] == metric].sort_values("scope")
            if not at.empty:
                ax.scatter(at["u"].astype(float), at["v"].astype(float), marker="*", s=140, color="white",
                           edgecolors="black", zorder=3)
                for _, member in at.iterrows():
                    ax.annotate(member["scope"].replace("member-", "m"), (float(member["u"]), float(member["v"])),
                                textcoords="offset points", xytext=(6, 6), fontsize="small", color="white")
            ax.set_xlabel("u (along member 1 − member 0)")
            ax.set_ylabel("v (orthogonal, towards member 2)")
            ax.set_title(f"{unit.split(' (')[0]} on the plane through members 0, 1, 2, {label}"
                         + ("" if kind == "none" else f"\n{_alignment_text(kind)}"))
        return figure

    return _per_run_figures(results, r"plane/(loss|accuracy)",
                            "no plane rows: run `sharpdiv connectivity RUN --plane`", draw, directory,
                            "plane", formats)


def plot_density(results: pd.DataFrame, directory: str | os.PathLike, *,
                 formats: Sequence[str] = FORMATS) -> Figures:
    """Per run: the Hessian eigenvalue density of each member (stochastic Lanczos quadrature,
    ``sharpdiv hessian --density``) on a symmetric-log density axis, with the top eigenvalues as
    ticks when they are stored."""
    def draw(rows: pd.DataFrame, label: str):
        density = _newest_grid(rows[rows["metric"] == "hessian/density"], ["grid_index"], ["eigenvalue"])
        if density.empty:
            return None
        figure, axes = new_figure(width=6.0, height=4.0)
        ax = axes[0, 0]
        palette = group_palette(sorted(density["scope"].unique()))
        for scope, curve in density.sort_values("eigenvalue").groupby("scope", sort=True):
            ax.plot(curve["eigenvalue"].astype(float), curve["value"].astype(float), color=palette[scope], label=scope)
        top = _latest_by(rows[rows["metric"] == "hessian/eigenvalue"], ["scope"], "n_iters", ["rank"])
        for scope, values in top.groupby("scope"):
            if scope in palette:
                for value in values["value"].astype(float):
                    ax.axvline(value, color=palette[scope], linestyle=":", linewidth=0.8)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel("Hessian eigenvalue (dotted: the top eigenvalues, when stored)")
        ax.set_ylabel("Density (symmetric log scale)")
        ax.set_title(f"Hessian spectral density of the members, {label}")
        ax.legend(fontsize="small")
        return figure

    return _per_run_figures(results, r"hessian/(density|eigenvalue)",
                            "no density rows: run `sharpdiv hessian RUN --density`", draw, directory,
                            "hessian-density", formats)


def _alignment_order(kinds: pd.Series) -> list[str]:
    present = list(dict.fromkeys(kinds.astype(str)))
    known = [kind for kind in ("none", "weight", "activation") if kind in present]
    return known + sorted(kind for kind in present if kind not in known)


def _alignment_text(kind: str) -> str:
    return "no alignment" if kind == "none" else f"after {kind} matching (members permuted to member 0)"


def plot_barrier_vs_eir(results: pd.DataFrame, directory: str | os.PathLike, *, combine: str | None = "probs",
                        formats: Sequence[str] = FORMATS) -> Figures:
    """Mean pairwise loss barrier against the ensemble improvement rate on clean test data, one
    marker per run and alignment; a grey segment joins a run's barrier before and after alignment.
    Low barriers after alignment with a high EIR mean the gain does not need several basins."""
    barriers = barriers_per_run(results)
    eir = per_run(results, "eir", on="test", combine=combine)
    barriers = barriers[barriers.index.isin(eir.dropna().index)]
    if barriers.empty:
        return skipped("needs connectivity barriers (`sharpdiv connectivity RUN --align weight,none`) and EIR "
                     "(`sharpdiv evaluate RUN`) of the same runs")
    markers = {"none": "o", "weight": "s", "activation": "^"}
    with plot_style():
        figure, axes = new_figure(width=6.0, height=4.5)
        ax = axes[0, 0]
        for path, values in barriers.iterrows():
            finite = values.dropna()
            if len(finite) > 1:
                ax.plot(finite.to_numpy(), [eir[path]] * len(finite), color="0.75", zorder=1)
        for kind in barriers.columns:
            ax.scatter(barriers[kind], eir.reindex(barriers.index), marker=markers.get(kind, "D"), zorder=2,
                       label=_alignment_text(kind))
        ax.set_xlabel("Mean loss barrier between members")
        ax.set_ylabel("Ensemble improvement rate (EIR)")
        ax.set_title("Connectivity against ensemble gain (one marker per run)")
        ax.legend(fontsize="small")
    return Figures(paths=tuple(save_figure(figure, Path(directory), "barrier-eir", formats)), figures=(figure,))
