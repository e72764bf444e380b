"""The whole report of a set of run folders: tables, figures, an ``index.html`` and a ``README.md``.

:func:`write_report` is what ``sharpdiv report`` does. It reads the stored results
(:mod:`reports.collect`), writes the tables (:mod:`reports.tables`) into ``<out>/tables`` and the
figures (:mod:`reports.plots`) into ``<out>/figures``, and lists every file it wrote in
``index.html`` (tables shown inline, figures as images linking to their SVG) and ``README.md``.
What a run lacks is named with the command that would store it; a figure whose rows no run
has is skipped, and the report says why.
"""
from __future__ import annotations

import datetime
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ensembles.runs.files import atomic_path
from ensembles.runs.files import RUN_FILE, mark_folder, require_writable_folder
from landscape.errors import InputError
from reports import plots
from reports.correlation import CorrelationSection, check_target, write_correlations
from reports.paired_comparisons import write_paired_comparisons
from reports.single_basin import TITLE as SINGLE_BASIN_TITLE
from reports.single_basin import DEEP, SingleBasinSection, with_constructions, write_single_basin
from reports.collect import (SharpnessSpec, collect, combined_grouping, comparable_grouping, criterion_counts,
                             diversity_description, diversity_metric, group_labels, group_order, missing_measurements, mixed_settings,
                             partial_corruptions, run_table, tradeoff_points)
from reports.tables import (CORRUPTION_QUANTITIES, beta_table, connectivity_table, corruption_table, severity_table,
                            summary_table, write_group_table,
                            write_table)
from reports.tradeoff import fits_by_group

__all__ = ["Report", "check_report_folder", "write_report"]

TABLES_DIR = "tables"
FIGURES_DIR = "figures"

_CAPTIONS = {
    "tradeoff-eir": "Sharpness against diversity, one marker per ensemble, colour = EIR; dashed lines are "
                    "each group's fitted power law with its slope β (SharpBalance Figs. 1c, 3–5, 12).",
    "tradeoff-member-accuracy": "The same trade-off coloured by the members' mean accuracy (Fig. 4, second row).",
    "methods": "Mean member accuracy (hatched) and the ensemble's improvement over it, per group; an ensemble "
               "below its members shows the shortfall as a red cross-hatched top (Fig. 7).",
    "severity": "Accuracy and EIR against corruption severity (Tables 2–4 as curves).",
    "corruptions": "Ensemble accuracy and DER against severity, one panel per corruption (dotted: chance); "
                   "a corruption at chance at every severity, hidden in the OOD means, shows here.",
    "ensemble-size": "Accuracy and EIR of the sub-ensembles of the first k members; k = 1 is the mean member "
                     "(Fig. 8).",
    "reliability": "Reliability diagrams of the ensembles, bins pooled over each group's runs.",
    "barriers": "Loss barriers between members.",
    "interpolation": "Loss and accuracy along the linear paths between members.",
    "plane": "Loss and accuracy on the plane through members 0, 1 and 2 (stars: the members).",
    "hessian-density": "Hessian eigenvalue density of each member (stochastic Lanczos quadrature).",
    "barrier-eir": "Mean loss barrier between members against EIR, one marker per run and alignment (members "
                   "permuted to match member 0); grey segments join a run's barriers before and after alignment.",
}


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote: the index, README, tables, figures, and its notes (missing
    measurements with the commands that would store them; skipped figures with the reason)."""

    directory: Path
    index: Path
    readme: Path
    tables: tuple[Path, ...]
    figures: tuple[Path, ...]
    notes: tuple[str, ...]
    rendered: dict = field(default_factory=dict, repr=False)


@dataclass
class _Section:
    title: str
    files: list[Path]
    text: pd.DataFrame | None = None
    caption: str = ""


def write_report(paths: Iterable, out: str | os.PathLike, *,
                 sharpness: str | SharpnessSpec = "sharpness/worst/l2/adaptive@0.5", diversity: str = "der",
                 diversity_on: str = "ood", group_by: str = "method", baseline: str | None = None,
                 combine: str | None = "probs",
                 formats: Sequence[str] = plots.FORMATS, force: bool = False,
                 correlate_with: str = "test_error") -> Report:
    """Write the report of the run folders ``paths`` into ``out`` and return what was written.

    ``sharpness`` is ``METRIC@RHO`` (the members' mean); ``diversity`` is der, variance or kl, read on
    corrupted data (``diversity_on="ood"``, mean over slices) or the clean test split (``"test"``);
    runs are grouped by the run.json field ``group_by`` (or a comma list of fields, ``"method,rho"``;
    ``construction`` is each run's single-basin construction, :func:`reports.single_basin.construction_of`);
    the severity tables show differences to the group ``baseline`` (default: the deep ensemble when
    grouped by construction, else sgd when it has data, else the first group that has data).
    ``out`` must be new, empty or a folder sharpdiv wrote (its ``.sharpdiv`` marker); ``force=True``
    writes into any folder, replacing same-named files. ``correlate_with`` is the target of the
    "Does sharpness predict generalization?" figure (:mod:`reports.correlation`).
    """
    spec = sharpness if isinstance(sharpness, SharpnessSpec) else SharpnessSpec.parse(sharpness)
    metric = diversity_metric(diversity)
    if diversity_on not in ("ood", "test"):
        raise InputError(f"--diversity-on {diversity_on!r}: use ood (corrupted data) or test (clean test split)")
    check_target(correlate_with)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder for the report")
    check_report_folder(out, force)
    paths, skipped = _run_folders(paths)
    runs = with_constructions(run_table(paths), group_by)  # --group-by construction: a label from run.json
    runs, group_by = combined_grouping(runs, group_by)
    # Runs on different data are never pooled: the groups are split by dataset when they span several.
    runs, group_by, split_note = comparable_grouping(runs, group_by)
    groups = group_labels(runs.set_index("path"), group_by)  # fails early, naming the fields there are
    if baseline is None and DEEP in set(groups):
        baseline = DEEP  # grouped by construction, the others are compared with the deep ensemble
    if baseline is not None and baseline not in set(groups):
        raise InputError(f"--baseline {baseline!r} is not a {group_by} of these runs; "
                         f"choose one of: {', '.join(group_order(groups))}")
    results = collect(runs["path"], runs)
    notes = skipped + ([split_note] if split_note else []) + criterion_counts(runs)
    notes += [str(missing) for missing in missing_measurements(results, runs, sharpness=spec, diversity=diversity,
                                                               on=diversity_on, combine=combine)]
    notes += mixed_settings(results, groups, spec)
    notes += partial_corruptions(results, runs)
    tables_dir, figures_dir = out / TABLES_DIR, out / FIGURES_DIR
    sections: list[_Section] = []
    mark_folder(out, "report")  # everything is checked: the first write

    runs_text = runs.set_index("run_label").map(_setting_text)
    sections.append(_Section("Runs and their run.json settings",
                             write_table(tables_dir, "runs", runs, runs_text, "Runs and their run.json settings"),
                             runs_text))
    summary = summary_table(results, runs, group_by=group_by, sharpness=spec, combine=combine)
    if summary.mean.shape[1]:
        sections.append(_Section(summary.title, write_group_table(tables_dir, summary), summary.text()))
    else:
        notes.append("summary table skipped: no run has results rows")
    for of in ("ensemble", "members"):
        table = severity_table(results, runs, group_by=group_by, baseline=baseline, of=of, combine=combine)
        if any(column not in ("ID", "OOD") for column in table.mean.columns):
            sections.append(_Section(table.title, write_group_table(tables_dir, table), table.text()))
        else:
            notes.append(f"severity table of the {of} skipped: no run has corrupted-data accuracy rows")
    for metric_name, _, _ in CORRUPTION_QUANTITIES:
        numbers, text, title = corruption_table(results, runs, group_by=group_by, metric=metric_name, combine=combine)
        if not numbers.empty:
            sections.append(_Section(title, write_table(tables_dir, f"corruptions-{metric_name}", numbers, text, title),
                                     text))
    points = tradeoff_points(results, sharpness=spec, diversity=diversity, on=diversity_on, combine=combine,
                             group_by=group_by)
    points = points[(points["sharpness"] > 0) & (points["diversity"] > 0)]
    if not points.empty:
        fitted = fits_by_group(points["sharpness"], points["diversity"], points["group"])
        fits = {group: fitted.get(group, f"no run has both {spec} and {metric}") for group in group_order(groups)}
        numbers, text, title = beta_table(fits, group_by, sharpness=str(spec),
                                          diversity=diversity_description(metric, diversity_on))
        sections.append(_Section(title, write_table(tables_dir, "tradeoff-beta", numbers, text, title), text))
    else:
        notes.append(f"β table skipped: no run has both {spec} and {metric} with positive values")
    paired = write_paired_comparisons(results, runs, tables_dir, combine=combine)  # methods on the same seed sets
    if paired is not None:
        sections.append(_Section(paired.title, paired.files, paired.text))
        notes += paired.notes
    numbers, text, title = connectivity_table(results, runs, combine=combine)
    if not numbers.empty:
        sections.append(_Section(title, write_table(tables_dir, "connectivity", numbers, text, title), text))

    common = {"group_by": group_by, "combine": combine, "formats": formats}
    rendered = {
        "tradeoff-eir": plots.plot_tradeoff(results, figures_dir, sharpness=spec, diversity=diversity, on=diversity_on,
                                            colour="eir", **common),
        "tradeoff-member-accuracy": plots.plot_tradeoff(results, figures_dir, sharpness=spec, diversity=diversity,
                                                        on=diversity_on, colour="member_accuracy", **common),
        "methods": plots.plot_method_comparison(results, figures_dir, **common),
        "severity": plots.plot_severity(results, figures_dir, **common),
        "corruptions": plots.plot_corruptions(results, figures_dir, **common),
        "ensemble-size": plots.plot_ensemble_size(results, figures_dir, **common),
        "reliability": plots.plot_reliability(results, figures_dir, **common),
        "barriers": plots.plot_barriers(results, figures_dir, formats=formats),
        "interpolation": plots.plot_interpolation(results, figures_dir, formats=formats),
        "plane": plots.plot_plane(results, figures_dir, formats=formats),
        "hessian-density": plots.plot_density(results, figures_dir, formats=formats),
        "barrier-eir": plots.plot_barrier_vs_eir(results, figures_dir, combine=combine, formats=formats),
    }
    correlation = write_correlations(results, runs, tables_dir, figures_dir, target=correlate_with, combine=combine,
                                     formats=formats)
    notes += correlation.notes
    # "How good is a single basin?": only when the runs hold a construction besides plain deep ensembles
    single_basin = write_single_basin(results, runs, tables_dir, figures_dir, combine=combine, formats=formats)
    notes += single_basin.notes
    figure_sections = []
    for name, figures in rendered.items():
        if figures.reason:
            notes.append(f"figure {name} skipped: {figures.reason}")
            continue
        for stem in dict.fromkeys(path.with_suffix("") for path in figures.paths):
            files = [path for path in figures.paths if path.with_suffix("") == stem]
            figure_sections.append(_Section(stem.name, files, caption=_CAPTIONS.get(name, "")))

    settings = {"runs": len(runs), "grouped by": group_by, "sharpness": f"{spec} — {spec.description}",
                "diversity": diversity_description(metric, diversity_on), "ensemble combination": combine,
                "written": datetime.datetime.now().isoformat(timespec="seconds")}
    index = out / "index.html"
    readme = out / "README.md"
    _write_text(readme, _readme(out, settings, sections, figure_sections, notes, correlation, single_basin))
    _write_text(index, _index(out, settings, sections, figure_sections, notes, readme, correlation, single_basin))
    return Report(directory=out, index=index, readme=readme,
                  tables=tuple(path for section in sections for path in section.files) + correlation.tables
                  + single_basin.tables,
                  figures=tuple(path for section in figure_sections for path in section.files) + correlation.figures
                  + single_basin.figures,
                  notes=tuple(notes), rendered=rendered)


def _run_folders(paths: Iterable) -> tuple[list[Path], list[str]]:
    """The paths that are run folders (a folder with run.json), and a note for each other entry, so
    ``sharpdiv report ROOT/runs/*`` passes over a ``sweep-log.jsonl`` beside the runs. None left
    is an error; a folder whose run.json is broken is not skipped (its reader names the problem)."""
    paths = [Path(path) for path in paths]
    runs = [path for path in paths if (path / RUN_FILE).is_file()]
    others = [path for path in paths if path not in runs]
    if others and not runs:
        shown = ", ".join(str(path) for path in others[:3]) + (" ..." if len(others) > 3 else "")
        raise InputError(f"none of the {len(others)} paths given is a run folder (a folder with "
                         f"{RUN_FILE}): {shown}; pass run folders")
    return runs, [f"skipped {path}: not a run folder (no {RUN_FILE})" for path in others]


def check_report_folder(out: str | os.PathLike, force: bool = False, what: str = "report --out") -> Path:
    """``out`` if a report may be written there: new, empty, marked as sharpdiv's, or holding a
    report sharpdiv wrote before it marked its folders; else an InputError (``force`` overrides).
    So a user's README.md or index.html is never replaced."""
    out = Path(out)
    return require_writable_folder(out, force or _earlier_report(out), what)


def _earlier_report(out: Path) -> bool:
    """Whether ``out`` holds a report sharpdiv wrote before it marked its folders."""
    readme = out / "README.md"
    try:
        return (out / "index.html").is_file() and readme.read_text(encoding="utf-8").startswith("# sharpdiv report\n")
    except (OSError, UnicodeDecodeError):
        return False


def _setting_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:.6g}"
    return str(value)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _relative(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def _kind(path: Path) -> str:
    if path.name.endswith("-runs.csv"):
        return "per-run CSV"
    return {".csv": "CSV", ".md": "Markdown", ".tex": "LaTeX", ".png": "PNG", ".svg": "SVG"}.get(path.suffix, path.suffix)


CORRELATION_TITLE = "Does sharpness predict generalization?"


def _readme(out, settings, sections, figure_sections, notes, correlation: CorrelationSection | None = None,
            single_basin: SingleBasinSection | None = None) -> str:
    lines = ["# sharpdiv report", "", "Open `index.html` for everything on one page.", ""]
    lines += [f"- {key}: {value}" for key, value in settings.items()]
    if correlation is not None and correlation.tables:
        links = ", ".join(f"[{_kind(p)}]({_relative(p, out)})" for p in correlation.tables + correlation.figures)
        lines += ["", f"## {CORRELATION_TITLE}", "", correlation.reading, "", links]
    if single_basin is not None and single_basin.written:
        links = ", ".join(f"[{_kind(p)}]({_relative(p, out)})" for p in single_basin.tables + single_basin.figures)
        lines += ["", f"## {SINGLE_BASIN_TITLE}", "", single_basin.caption, "", links]
    lines += ["", "## Tables", ""]
    for section in sections:
        links = ", ".join(f"[{_kind(p)}]({_relative(p, out)})" for p in section.files)
        lines.append(f"- {section.title}: {links}")
    lines += ["", "## Figures", ""]
    for section in figure_sections:
        links = ", ".join(f"[{_kind(p)}]({_relative(p, out)})" for p in section.files)
        lines.append(f"- {section.title}: {section.caption} {links}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
.notes li { color: #8a3b00; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _correlation_html(out, correlation: CorrelationSection) -> list[str]:
    """The reading, the figure and the table of :mod:`reports.correlation`, under their question."""
    e = html.escape
    parts = [f"<h2>{e(CORRELATION_TITLE)}</h2>", f"<p>{e(correlation.reading)}</p>"]
    png = next((p for p in correlation.figures if p.suffix == ".png"), None)
    if png is not None:
        parts.append(f'<figure><img src="{e(_relative(png, out))}" alt="{e(CORRELATION_TITLE)}"></figure>')
    links = " · ".join(f'<a href="{e(_relative(p, out))}">{e(_kind(p))}</a>' for p in correlation.tables + correlation.figures)
    parts.append(f"<p>{links}</p>")
    parts.append('<div class="scroll">' + correlation.text.to_html(escape=True, border=0, na_rep="", index=False)
                 + "</div>")
    if correlation.settings_text is not None:
        parts.append("<p>How each measure and target moves with each setting (mean τ with the setting's value over "
                     "the groups of models that differ only in it):</p>")
        parts.append('<div class="scroll">' + correlation.settings_text.to_html(escape=True, border=0, na_rep="",
                                                                              index=False) + "</div>")
    return parts


def _single_basin_html(out, section: SingleBasinSection) -> list[str]:
    """The figure and the two tables of :mod:`reports.single_basin`, under their question."""
    e = html.escape
    parts = [f"<h2>{e(SINGLE_BASIN_TITLE)}</h2>"]
    png = next((p for p in section.figures if p.suffix == ".png"), None)
    if png is not None:
        parts.append(f'<figure><img src="{e(_relative(png, out))}" alt="{e(SINGLE_BASIN_TITLE)}">'
                     f"<figcaption>{e(section.caption)}</figcaption></figure>")
    links = " · ".join(f'<a href="{e(_relative(p, out))}">{e(_kind(p))}</a>' for p in section.tables + section.figures)
    parts.append(f"<p>{links}</p>")
    for title, text in section.texts:
        parts.append(f"<p>{e(title)}</p>")
        parts.append('<div class="scroll">' + text.to_html(escape=True, border=0, na_rep="") + "</div>")
    return parts


def _index(out, settings, sections, figure_sections, notes, readme, correlation: CorrelationSection | None = None,
           single_basin: SingleBasinSection | None = None) -> str:
    e = html.escape
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>sharpdiv report</title>", f"<style>{_STYLE}</style></head><body>",
             "<h1>sharpdiv report</h1>", "<ul>"]
    parts += [f"<li><b>{e(key)}</b>: {e(str(value))}</li>" for key, value in settings.items()]
    parts.append(f'<li>this page as a file list: <a href="{e(_relative(readme, out))}">README.md</a></li></ul>')
    if notes:
        parts.append('<h2>Notes</h2><ul class="notes">')
        for note in notes:
            # Commands are quoted with backticks in the notes; show them as code.
            pieces = e(note).split("`")
            parts.append("<li>" + "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces)) + "</li>")
        parts.append("</ul>")
    if correlation is not None and correlation.tables:
        parts += _correlation_html(out, correlation)
    if single_basin is not None and single_basin.written:
        parts += _single_basin_html(out, single_basin)
    parts.append("<h2>Tables</h2>")
    for section in sections:
        links = " · ".join(f'<a href="{e(_relative(p, out))}">{e(_kind(p))}</a>' for p in section.files)
        parts.append(f"<h3>{e(section.title)}</h3><p>{links}</p>")
        if section.text is not None:
            parts.append('<div class="scroll">' + section.text.to_html(escape=True, border=0, na_rep="") + "</div>")
    parts.append("<h2>Figures</h2>")
    for section in figure_sections:
        png = next((p for p in section.files if p.suffix == ".png"), None)
        links = " · ".join(f'<a href="{e(_relative(p, out))}">{e(_kind(p))}</a>' for p in section.files)
        parts.append(f"<figure><h3>{e(section.title)}</h3>")
        if png is not None:
            parts.append(f'<img src="{e(_relative(png, out))}" alt="{e(section.title)}">')
        parts.append(f"<figcaption>{e(section.caption)} {links}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
