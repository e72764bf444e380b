"""How good is a single basin? Connectivity against accuracy, per construction of an ensemble.

The question of Lion, Noci, Hofmann and Bachmann ("How good is a single basin?", AISTATS 2024):
how much of a deep ensemble's gain survives when its members are kept in one basin, and how much
distillation from other basins brings back. Their Fig. 3 plots an ensemble's connectivity ``q̄``
against its test accuracy, with the deep ensemble's accuracy (dashed) and its mean member accuracy
(dotted) as reference lines; this module draws that figure and the table beside it from stored rows
only (nothing is measured or recomputed here).

``q̄`` is ``connectivity/q_bar``: the mean over member pairs of our connectivity ``q``
(:func:`landscape.connectivity.pair_connectivity`), a stated reconstruction of the paper's
``q_pair``, whose exact formula could not be recovered from the text available to us.

Constructions are read from each run's run.json (the settings the trainer records):

- ``deep ensemble``: none of ``spawn_epoch``, ``connect_strength``, ``distill_from`` set;
- ``spawned at epoch T`` (``spawn_epoch``; ``T = 0`` is a shared initialization);
- ``constrained, λ = x`` (``connect_strength``; λ = 0 is plain training, shown as its own row);
- ``distilled (member-wise | from the ensemble, w, τ)`` (``distill_from`` with ``distill_target``,
  ``distill_weight``, ``distill_temperature``); settings combined are joined with `` + ``;
- ``deep ensemble aligned to member 0 (weight | activation matching)``: a deep ensemble with aligned
  connectivity rows (``sharpdiv connectivity --align weight``). Its members are permuted into
  member 0's basin, which changes no prediction: its accuracy, NLL, ECE, DER and EIR *are* the deep
  ensemble's evaluation rows, and only its ``q̄`` is the one measured after the alignment.

Runs are compared only within one *basis*: the same dataset, number of classes, model, width,
method and ρ (labels name the basis when the runs span several). Per ensemble the quantities are
accuracy, NLL, ECE, DER and EIR of the ensemble on clean test data (ID) and on the corrupted data
(OOD, mean over the corruption × severity slices), ``q̄`` (unaligned, or after alignment for the
aligned row) and the ensemble gain, ensemble accuracy − mean member accuracy (percentage points).
Per construction the table gives the mean over its ensembles with a 95% t interval,
``mean ± t(0.975, n−1) · s/√n``, and the paired difference to the deep ensemble trained with the
same seeds (same basis): ``d_k = x_k − x_deep(seeds_k)``, ``mean(d) ± t(0.975, n−1) · s_d/√n``.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from reports.collect import RUN_PREFIX, per_run, with_alignment
from reports.tables import t_interval

__all__ = ["CONSTRUCTION", "DEEP", "SingleBasinSection", "construction_of", "plot_single_basin",
           "single_basin_points", "single_basin_tables", "with_constructions", "write_single_basin"]

DEEP = "deep ensemble"
#: The grouping by construction (``--group-by construction``): a label derived from run.json, not a field of it.
CONSTRUCTION = "construction"
TITLE = "How good is a single basin?"
#: run.json fields two runs must share for their numbers to be compared (a construction with its deep ensemble).
BASIS_FIELDS = ("dataset", "num_classes", "model", "width", "method", "rho")
#: The ensemble's quantities read from evaluation rows: (column, metric, data, in percent).
_QUANTITIES = (
    ("accuracy ID (%)", "accuracy", "test", True),
    ("accuracy OOD (%)", "accuracy", "ood", True),
    ("NLL ID", "nll", "test", False),
    ("NLL OOD", "nll", "ood", False),
    ("ECE ID", "ece", "test", False),
    ("ECE OOD", "ece", "ood", False),
    ("DER ID", "der", "test", False),
    ("DER OOD", "der", "ood", False),
    ("EIR ID", "eir", "test", False),
    ("EIR OOD", "eir", "ood", False),
)
Q_BAR = "q̄"
GAINS = (("gain ID (pp)", "test"), ("gain OOD (pp)", "ood"))
PERCENT = ("accuracy ID (%)", "accuracy OOD (%)", "gain ID (pp)", "gain OOD (pp)")
QUANTITIES = tuple(column for column, *_ in _QUANTITIES) + (Q_BAR,) + tuple(column for column, _ in GAINS)
#: q̄ settings that belong to one run (its reference's digest, its traced groups) or say which kind of q̄ it is.
_PER_RUN_SETTINGS = {"reference_weights", "align_spec", "aligned_to", "alignment", "aggregate", "align_seed",
                     "align_examples"}


# ----------------------------------------------------------------------------------------------
# constructions


@dataclass(frozen=True)
class Construction:
    """How a run's ensemble was built: its ``label`` and where it sorts (``order``)."""

    label: str
    order: tuple


def _given(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and value != ""


def _number(value) -> str:
    return f"{float(value):g}"


def construction_of(settings) -> Construction:
    """The construction a run's run.json settings (``run.<field>`` or plain names) describe."""
    def get(field):
        return settings.get(RUN_PREFIX + field, settings.get(field))

    pieces, order = [], [0, math.inf, math.inf, ""]
    spawn, strength, teacher = get("spawn_epoch"), get("connect_strength"), get("distill_from")
    if _given(spawn):
        epoch = int(float(spawn))
        pieces.append(f"spawned at epoch {epoch}" + (" (shared initialization)" if epoch == 0 else ""))
        order[0], order[1] = 2, epoch
    if _given(strength):
        pieces.append(f"constrained, λ = {_number(strength)}")
        order[0], order[2] = 3, float(strength)
    if _given(teacher):
        target, weight, temperature = get("distill_target"), get("distill_weight"), get("distill_temperature")
        details = ["from the ensemble" if target == "ensemble" else "member-wise"]
        details += [f"{name} = {_number(value)}" for name, value in (("w", weight), ("τ", temperature))
                    if _given(value)]
        pieces.append(f"distilled ({', '.join(details)})")
        order[0] = 4
    label = " + ".join(pieces) or DEEP
    order[3] = label
    return Construction(label, tuple(order))


def with_constructions(runs: pd.DataFrame, group_by: str) -> pd.DataFrame:
    """``runs`` (:func:`reports.collect.run_table`) with the field ``run.construction``, each run's
    :func:`construction_of` label, when ``group_by`` (a field or a comma list of them) names
    ``construction``; unchanged otherwise. In memory only: the run folders are not touched."""
    fields = [field.strip().removeprefix(RUN_PREFIX) for field in group_by.split(",")]
    if CONSTRUCTION not in fields:
        return runs
    labels = [construction_of(row).label for row in runs.to_dict("records")]
    return runs.assign(**{RUN_PREFIX + CONSTRUCTION: labels})


def _aligned_label(kind: str) -> str:
    return f"deep ensemble aligned to member 0 ({kind} matching)"


def _basis(runs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per run (index path): a key of the basis fields, and a text naming the fields that vary."""
    columns = [RUN_PREFIX + field for field in BASIS_FIELDS if RUN_PREFIX + field in runs.columns]
    if not columns:
        empty = pd.Series("", index=runs.index)
        return empty, empty
    def cell(value) -> str:
        if not _given(value):
            return ""
        numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
        return _number(value) if numeric else str(value)

    cells = runs[columns].astype(object).map(cell)
    varying = [column for column in columns if cells[column].nunique() > 1]
    key = cells.agg("|".join, axis=1)
    named = {RUN_PREFIX + "width": "width {}", RUN_PREFIX + "rho": "ρ = {}", RUN_PREFIX + "num_classes": "{} classes"}
    text = pd.Series([", ".join(named.get(column, "{}").format(row[column]) for column in varying if row[column])
                      for _, row in cells.iterrows()], index=runs.index, dtype=object)
    return key, text


# ----------------------------------------------------------------------------------------------
# one point per ensemble


def _q_bar(results: pd.DataFrame) -> pd.DataFrame:
    """The newest ``connectivity/q_bar`` row per run and alignment: columns ``path``, ``alignment``,
    ``value``, ``measured`` (its settings and data slice, for the note on mixed settings)."""
    if results.empty or "metric" not in results:
        return pd.DataFrame(columns=["path", "alignment", "value", "measured"])
    rows = with_alignment(results[(results["metric"] == "connectivity/q_bar") & (results["scope"] == "ensemble")])
    if rows.empty:
        return pd.DataFrame(columns=["path", "alignment", "value", "measured"])
    rows = rows.sort_values("created", kind="stable").groupby(["path", "alignment"], sort=False).tail(1)

    def measured(row) -> str:
        settings = {k: v for k, v in json.loads(row["settings"]).items() if k not in _PER_RUN_SETTINGS}
        return json.dumps({**settings, "split": row.get("split")}, sort_keys=True)

    return rows.assign(measured=rows.apply(measured, axis=1))[["path", "alignment", "value", "measured"]]


def _aligned_kinds(results: pd.DataFrame) -> pd.DataFrame:
    """(path, alignment) of every run with aligned connectivity rows of that kind."""
    if results.empty or "metric" not in results:
        return pd.DataFrame(columns=["path", "alignment"])
    rows = with_alignment(results[results["metric"].astype(str).str.startswith("connectivity/")])
    return rows.loc[rows["alignment"] != "none", ["path", "alignment"]].drop_duplicates()


def single_basin_points(results: pd.DataFrame, runs: pd.DataFrame, *, combine: str | None = "probs") -> pd.DataFrame:
    """One row per ensemble and construction (a deep ensemble with aligned rows appears twice: as
    itself and aligned): ``path``, ``run_label``, ``construction``, ``order``, ``basis``, ``seeds``
    and the :data:`QUANTITIES` (NaN where a run lacks the rows), plus ``member accuracy ID (%)`` and
    ``member accuracy OOD (%)`` for the figure's dotted lines. Read from stored rows only."""
    frame = runs.set_index("path")
    basis, basis_text = _basis(frame)
    values = pd.DataFrame(index=frame.index)
    for column, metric, on, percent in _QUANTITIES:
        values[column] = (100 if percent else 1) * per_run(results, metric, on=on, combine=combine).reindex(frame.index)
    members = {}
    for column, on in GAINS:
        members[on] = 100 * per_run(results, "accuracy", scope="members", on=on, combine=combine).reindex(frame.index)
        ensemble = values["accuracy ID (%)" if on == "test" else "accuracy OOD (%)"]
        values[column] = ensemble - members[on]
    values["member accuracy ID (%)"] = members["test"]
    values["member accuracy OOD (%)"] = members["ood"]
    q_bar = _q_bar(results)
    unaligned = q_bar[q_bar["alignment"] == "none"].set_index("path")
    seeds = (frame[RUN_PREFIX + "seeds"].astype(str) if RUN_PREFIX + "seeds" in frame
             else pd.Series("", index=frame.index))

    points = []
    for path in frame.index:
        construction = construction_of(frame.loc[path].to_dict())
        suffix = f" ({basis_text[path]})" if basis_text[path] else ""
        common = {"path": path, "run_label": frame.loc[path, "run_label"], "basis": basis[path], "seeds": seeds[path]}
        q = unaligned["value"].get(path, math.nan)
        points.append({**common, "construction": construction.label + suffix, "kind": construction.label,
                       "order": (basis[path], *construction.order), **values.loc[path].to_dict(), Q_BAR: q,
                       "q measured": unaligned["measured"].get(path)})
    aligned = _aligned_kinds(results)
    for path, kind in aligned.itertuples(index=False):
        if path not in frame.index or construction_of(frame.loc[path].to_dict()).label != DEEP:
            continue  # only a deep ensemble aligned into one basin is a construction of its own
        found = q_bar[(q_bar["path"] == path) & (q_bar["alignment"] == kind)]
        suffix = f" ({basis_text[path]})" if basis_text[path] else ""
        points.append({"path": path, "run_label": frame.loc[path, "run_label"], "basis": basis[path],
                       "seeds": seeds[path], "construction": _aligned_label(kind) + suffix,
                       "kind": _aligned_label(kind),
                       "order": (basis[path], 1, kind), **values.loc[path].to_dict(),
                       Q_BAR: found["value"].iloc[0] if len(found) else math.nan,
                       "q measured": found["measured"].iloc[0] if len(found) else None})
    columns = ["path", "run_label", "construction", "kind", "order", "basis", "seeds", *QUANTITIES,
               "member accuracy ID (%)", "member accuracy OOD (%)", "q measured"]
    return pd.DataFrame(points, columns=columns)


def has_constructions(points: pd.DataFrame) -> bool:
    """Whether the runs hold anything besides plain deep ensembles (the section's condition)."""
    return bool((points["kind"] != DEEP).any()) if len(points) else False


# ----------------------------------------------------------------------------------------------
# the table


def _construction_order(points: pd.DataFrame) -> list[str]:
    firsts = points.drop_duplicates("construction")
    keyed = sorted(zip(firsts["order"].map(_sortable), firsts["construction"]))
    return [label for _, label in keyed]


def _sortable(order: tuple) -> tuple:
    return tuple((0, value, "") if isinstance(value, (int, float)) else (1, 0.0, str(value)) for value in order)


def _deep_partner(points: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """For each point (by position), the index of the deep ensemble of its basis with the same seeds
    (NaN when none, or when several are: the pairing would be a guess); and notes about both."""
    deep = points[points["kind"] == DEEP]
    partners = deep.groupby(["basis", "seeds"]).groups
    notes, partner = [], []
    for _, point in points.iterrows():
        found = list(partners.get((point["basis"], point["seeds"]), []))
        if len(found) > 1:
            notes.append(f"{len(found)} deep ensembles have the seeds {point['seeds']} "
                         f"({', '.join(points.loc[found, 'run_label'])}): {point['run_label']} is paired with none")
        partner.append(found[0] if len(found) == 1 else math.nan)
    return pd.Series(partner, index=points.index), list(dict.fromkeys(notes))


def single_basin_tables(points: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]:
    """``(numbers, means, differences, notes)``: tidy numbers (one row per construction and quantity:
    ``ensembles``, ``n``, ``mean``, ``ci_low``, ``ci_high``, ``pairs``, ``difference``,
    ``difference_low``, ``difference_high``), and the formatted tables of means [95% t interval]
    and of paired differences to the deep ensemble of the same seeds [95% t interval]."""
    order = _construction_order(points)
    shown = [q for q in QUANTITIES if points[q].notna().any()]
    partner, notes = _deep_partner(points)
    rows = []
    for label in order:
        mine = points[points["construction"] == label]
        paired = partner[mine.index].dropna().astype(int)
        is_deep = bool((mine["kind"] == DEEP).all())
        for quantity in shown:
            mean, low, high, n = t_interval(mine[quantity])
            differences = (mine.loc[paired.index, quantity].to_numpy(dtype=float)
                           - points.loc[paired.to_numpy(), quantity].to_numpy(dtype=float))
            difference, difference_low, difference_high, pairs = (
                (math.nan, math.nan, math.nan, 0) if is_deep else t_interval(differences))
            rows.append({"construction": label, "quantity": quantity, "ensembles": len(mine), "n": n, "mean": mean,
                         "ci_low": low, "ci_high": high, "pairs": pairs, "difference": difference,
                         "difference_low": difference_low, "difference_high": difference_high})
        if not is_deep and len(paired) < len(mine):
            missing = mine.loc[mine.index.difference(paired.index), "run_label"]
            notes.append(f"{label}: no deep ensemble of the same seeds for {', '.join(missing)}, so no paired "
                         "difference from it; train one with those seeds")
    numbers = pd.DataFrame(rows, columns=["construction", "quantity", "ensembles", "n", "mean", "ci_low", "ci_high",
                                          "pairs", "difference", "difference_low", "difference_high"])
    deep = set(points.loc[points["kind"] == DEEP, "construction"])
    return (numbers, _text(numbers, order, shown, "mean", deep), _text(numbers, order, shown, "difference", deep),
            notes)


def _text(numbers: pd.DataFrame, order: list[str], shown: list[str], what: str, deep: set[str]) -> pd.DataFrame:
    """Cells ``value [low, high]`` (``[n=k]`` where fewer ensembles than the construction has carry
    the quantity) of the means or of the paired differences; the deep ensemble is the reference."""
    count, low, high = ("n", "ci_low", "ci_high") if what == "mean" else ("pairs", "difference_low", "difference_high")
    text = pd.DataFrame(index=pd.Index(order, name="construction"), columns=shown, dtype=object)
    by_construction = numbers.groupby("construction", sort=False)
    # [n=k] marks a quantity fewer ensembles (pairs) carry than the construction has (pairs for any quantity)
    totals = by_construction["ensembles" if what == "mean" else "pairs"].max()
    for row in numbers.to_dict("records"):
        text.loc[row["construction"], row["quantity"]] = _cell(row[what], row[low], row[high], row[count],
                                                               totals[row["construction"]], row["quantity"] in PERCENT,
                                                               signed=what == "difference")
    if what == "mean":
        text.insert(0, "ensembles", [str(by_construction["ensembles"].first()[label]) for label in order])
    else:
        pairs = by_construction["pairs"].max()
        text.insert(0, "pairs", ["reference" if label in deep else str(pairs[label]) for label in order])
    return text


def _cell(value, low, high, count, total, percent, signed=False) -> str:
    if count == 0 or not np.isfinite(value):
        return "—"

    def shown(x):
        text = f"{x:.2f}" if percent else f"{x:.4g}"
        return ("+" + text if x >= 0 else "−" + text[1:]) if signed else text.replace("-", "−")

    text = shown(value)
    if np.isfinite(low):
        text += f" [{shown(low)}, {shown(high)}]"
    if count < total:
        text += f" [n={count}]"
    return text


# ----------------------------------------------------------------------------------------------
# the figure


#: The figure's rows: accuracy on clean test data (the paper's Fig. 3), then on corrupted data when
#: the runs were evaluated there: (ensemble column, mean member column, what the data is).
_FIGURE_ROWS = (("accuracy ID (%)", "member accuracy ID (%)", "clean test data"),
                ("accuracy OOD (%)", "member accuracy OOD (%)", "corrupted data (mean over slices)"))


def plot_single_basin(points: pd.DataFrame, directory: str | os.PathLike, *, formats: Sequence[str] = ("png", "svg"),
                      stem: str = "single-basin"):
    """q̄ (x) against ensemble accuracy on clean test data (y), one marker per ensemble, colour and
    shape by construction, a grey segment joining a deep ensemble to itself aligned; per basis (one
    panel each) the deep ensembles' mean accuracy dashed and their mean member accuracy dotted (Lion
    et al. 2024, Fig. 3). When the ensembles were evaluated on corrupted data, a second row shows the
    same against their accuracy there (mean over the slices), where a small clean test split leaves
    little to tell apart. Returns :class:`reports.plots.Figures`."""
    from reports import plots

    drawn = points[points[Q_BAR].notna() & points["accuracy ID (%)"].notna()]
    if drawn.empty:
        return plots.skipped("no ensemble has both q̄ (`sharpdiv connectivity RUN`) and a clean test accuracy "
                           "(`sharpdiv evaluate RUN`)")
    rows = [row for row in _FIGURE_ROWS if drawn[row[0]].notna().any()]
    order = [label for label in _construction_order(points) if label in set(drawn["construction"])]
    kinds = list(dict.fromkeys(points.set_index("construction").loc[order, "kind"]))
    palette = plots.group_palette(kinds)
    markers = {kind: plots.MARKERS[i % len(plots.MARKERS)] for i, kind in enumerate(kinds)}
    bases = list(dict.fromkeys(drawn.sort_values("order", key=lambda s: s.map(_sortable))["basis"]))
    with plots.plot_style():
        figure, axes = plots.new_figure(len(rows), len(bases), width=8.5, height=4.6)
        for (accuracy, member_accuracy, data), panels in zip(rows, axes):
            for axis, basis in zip(panels, bases):
                _draw_panel(axis, points, drawn[drawn["basis"] == basis], basis, order, palette, markers,
                            accuracy, member_accuracy, data, several=len(bases) > 1)
        paths = plots.save_figure(figure, Path(directory), stem, formats)
    return plots.Figures(paths=tuple(paths), figures=(figure,))


def _draw_panel(axis, points: pd.DataFrame, mine: pd.DataFrame, basis: str, order: list[str], palette: dict,
                markers: dict, accuracy: str, member_accuracy: str, data: str, several: bool) -> None:
    """One panel of :func:`plot_single_basin`: the ensembles of one basis against ``accuracy``."""
    mine = mine[mine[accuracy].notna()]
    for label in order:
        chosen = mine[mine["construction"] == label]
        if chosen.empty:
            continue
        kind = chosen["kind"].iloc[0]
        axis.scatter(chosen[Q_BAR], chosen[accuracy], s=40, color=palette[kind], marker=markers[kind],
                     label=label, edgecolor="white", linewidth=0.5, zorder=3)
    for _, run in mine.groupby("path"):  # a deep ensemble before and after alignment: one ensemble
        if len(run) > 1:
            run = run.sort_values(Q_BAR)
            axis.plot(run[Q_BAR], run[accuracy], color="0.75", linewidth=0.8, zorder=1)
    deep = points[(points["basis"] == basis) & (points["kind"] == DEEP)]
    for column, style, text in ((accuracy, "--", "deep ensemble accuracy"),
                                (member_accuracy, ":", "deep ensemble members' mean accuracy")):
        level = deep[column].mean()
        if np.isfinite(level):
            axis.axhline(level, color="0.3", linestyle=style, linewidth=1.2, label=f"{text} ({level:.2f}%)", zorder=2)
    axis.set_xlim(-0.02, 1.02)
    axis.set_xlabel("Connectivity q̄ (mean over member pairs; 1 = one basin)")
    axis.set_ylabel(f"Ensemble accuracy on {data.split(' (')[0]} (%)")
    shown = mine["construction"].iloc[0] if len(mine) else ""
    where = shown[shown.rfind("(") + 1:-1] if several and shown.endswith(")") else ""
    axis.set_title(f"Connectivity against accuracy on {data}{', ' + where if where else ''}")
    axis.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))


# ----------------------------------------------------------------------------------------------
# the report's section


@dataclass(frozen=True)
class SingleBasinSection:
    """What :func:`write_single_basin` wrote: the table files, their titles and formatted text, the
    figure and its caption, and notes (why there is no section, what is missing)."""

    tables: tuple[Path, ...] = ()
    texts: tuple[tuple[str, pd.DataFrame], ...] = ()
    figures: tuple[Path, ...] = ()
    caption: str = ""
    notes: tuple[str, ...] = ()

    @property
    def written(self) -> bool:
        return bool(self.tables)


CAPTION = ("Connectivity q̄ against ensemble accuracy on clean test data, one marker per ensemble, by construction; "
           "dashed: the deep ensembles' mean accuracy, dotted: their members' mean accuracy (Lion et al. 2024, "
           "Fig. 3, on these runs); below, when the runs were evaluated on corrupted data, the same there (mean over "
           "the slices). q̄ is the mean over member pairs of our connectivity q, a stated reconstruction "
           "of the paper's q_pair (whose exact formula could not be recovered): the worst fraction of the chord "
           "between two members' accuracies that the linear path between them keeps.")


def write_single_basin(results: pd.DataFrame, runs: pd.DataFrame, tables_dir: str | os.PathLike,
                       figures_dir: str | os.PathLike, *, combine: str | None = "probs",
                       formats: Sequence[str] = ("png", "svg")) -> SingleBasinSection:
    """The section "How good is a single basin?": ``tables/single-basin.{csv,md,tex}`` (means with
    95% t intervals per construction; ``single-basin-runs.csv`` one row per ensemble),
    ``tables/single-basin-difference.{csv,md,tex}`` (paired differences to the deep ensemble of the
    same seeds) and the figure ``single-basin``. Nothing is written, with no note, when the runs are
    plain deep ensembles without aligned connectivity rows."""
    from reports.tables import write_table

    points = single_basin_points(results, runs, combine=combine)
    if not has_constructions(points):
        return SingleBasinSection()
    numbers, means, differences, notes = single_basin_tables(points)
    lacking = points[points[Q_BAR].isna()]
    for _, point in lacking.iterrows():
        aligned = re.search(r"\((weight|activation) matching\)", point["kind"])
        option = f" --align {aligned.group(1)},none" if aligned else ""
        notes.append(f"{point['run_label']} has no q̄{' after ' + aligned.group(1) + ' alignment' if aligned else ''}: "
                     f"run `sharpdiv connectivity {point['path']}{option}`")
    measured = points["q measured"].dropna()
    if measured.nunique() > 1:
        notes.append(f"q̄ was measured with {measured.nunique()} different settings or data slices across these "
                     "ensembles (n_examples, alphas, bn_mode, split ...); the table and figure mix them: measure every "
                     "run alike")
    if not (points["kind"] == DEEP).any():
        notes.append("no plain deep ensemble among these runs: no reference lines and no paired differences")
    title = (f"{TITLE} Mean over each construction's ensembles [95% t interval]; q̄ = mean over member pairs of our "
             "connectivity q (a reconstruction of Lion et al. 2024's q_pair); gain = ensemble accuracy − mean member "
             "accuracy (percentage points); ID = clean test data, OOD = mean over corrupted slices")
    difference_title = (f"{TITLE} Paired difference to the deep ensemble trained with the same seeds, mean over "
                        "pairs [95% t interval]; the aligned deep ensemble has the deep ensemble's predictions, so "
                        "only its q̄ differs")
    per_run = points.drop(columns=["order", "q measured"]).set_index("path")
    files = write_table(tables_dir, "single-basin", numbers, means, title, per_run=per_run)
    files += write_table(tables_dir, "single-basin-difference",
                         numbers[["construction", "quantity", "pairs", "difference", "difference_low",
                                  "difference_high"]], differences, difference_title)
    figure = plot_single_basin(points, figures_dir, formats=formats)
    if figure.reason:
        notes.append(f"single-basin figure skipped: {figure.reason}")
    return SingleBasinSection(tables=tuple(files), texts=((title, means), (difference_title, differences)),
                              figures=figure.paths, caption=CAPTION, notes=tuple(f"single basin: {n}" for n in notes))
