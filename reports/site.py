"""The whole report of a set of run folders: tables, figures, an ``index.html`` and a ``README.md``.

:func:`write_report` is what ``sharpdiv report`` does. It reads the stored results
(:mod:`reports.collect`), writes the tables (:mod:`reports.tables`) into ``<out>/tables`` and the
figures (:mod:`reports.plots`) into ``<out>/figures``, and lays them out as a results section
(:mod:`reports.page`, rendered by the templates in ``reports/templates/``):

1. the question the runs answer, and what was compared (runs, groups, data);
2. the study's own headline when it has one: the rank correlations of a model zoo
   (:mod:`reports.correlation`; shown when the runs form a zoo, :func:`reports.correlation.forms_a_zoo`,
   or when ``correlate_with`` is given), the single-basin comparison when the runs are grouped by
   construction (:mod:`reports.single_basin`);
3. the summary per group with 95% t intervals, the sharpness–diversity trade-off with β and its
   verdict, the paired comparisons of methods on the same seeds, accuracy by severity and per
   corruption, each figure beside the table of its numbers; then every quantity, connectivity and
   spectra when stored;
4. the runs' settings (those that differ between runs in a table, the rest once) and provenance;
5. notes on the numbers, and one collapsed list of what the runs did not measure, each with the
   command that would store it.

A section appears when the runs answer it. ``index.html`` and ``README.md`` link every file written.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from ensembles.runs.files import RUN_FILE, atomic_path, mark_folder, require_writable_folder
from landscape.errors import InputError
from reports import page as pages
from reports import plots
from reports.collect import (RUN_PREFIX, SharpnessSpec, collect, combined_grouping, comparable_grouping,
                             criterion_counts, diversity_description, diversity_metric, group_labels, group_order,
                             missing_measurements, mixed_settings, partial_corruptions, run_table, tradeoff_points)
from reports.correlation import CorrelationSection, check_target, forms_a_zoo, write_correlations
from reports.paired_comparisons import write_paired_comparisons
from reports.single_basin import TITLE as SINGLE_BASIN_TITLE
from reports.single_basin import DEEP, SingleBasinSection, with_constructions, write_single_basin
from reports.tables import (CORRUPTION_QUANTITIES, beta_table, connectivity_table, corruption_table, fixed_decimals,
                            headline_table, joined, provenance_table, severity_table, summary_table,
                            write_group_table, write_table)
from reports.tradeoff import BetaFit, fits_by_group

__all__ = ["CORRELATION_TITLE", "Report", "check_report_folder", "write_report"]

TABLES_DIR = "tables"
FIGURES_DIR = "figures"
CORRELATION_TITLE = "Does sharpness predict generalization?"

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
#: The headline section's title when its question is the page's.
_HEADLINE_TITLES = {"correlation": "Rank correlations of each measure with each target",
                    "single-basin": "Connectivity and accuracy by construction"}
#: Fewest ensembles a trade-off relates: one point is no trade-off.
MIN_TRADEOFF_POINTS = 2


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote: the index, README, tables, figures, and its notes (missing
    measurements with the commands that would store them; skipped figures with the reason). ``page``
    is what index.html shows, section by section."""

    directory: Path
    index: Path
    readme: Path
    tables: tuple[Path, ...]
    figures: tuple[Path, ...]
    notes: tuple[str, ...]
    rendered: dict = field(default_factory=dict, repr=False)
    page: pages.Page | None = field(default=None, repr=False)


def write_report(paths: Iterable, out: str | os.PathLike, *,
                 sharpness: str | SharpnessSpec = "sharpness/worst/l2/adaptive@0.5", diversity: str = "der",
                 diversity_on: str = "ood", group_by: str = "method", baseline: str | None = None,
                 combine: str | None = "probs",
                 formats: Sequence[str] = plots.FORMATS, force: bool = False,
                 correlate_with: str | None = None) -> Report:
    """Write the report of the run folders ``paths`` into ``out`` and return what was written.

    ``sharpness`` is ``METRIC@RHO`` (the members' mean); ``diversity`` is der, variance or kl, read on
    corrupted data (``diversity_on="ood"``, mean over slices) or the clean test split (``"test"``);
    runs are grouped by the run.json field ``group_by`` (or a comma list of fields, ``"method,rho"``;
    ``construction`` is each run's single-basin construction, :func:`reports.single_basin.construction_of`);
    the severity tables show differences to the group ``baseline`` (default: the deep ensemble when
    grouped by construction, else sgd when it has data, else the first group that has data).
    ``out`` must be new, empty or a folder sharpdiv wrote (its ``.sharpdiv`` marker); ``force=True``
    writes into any folder, replacing same-named files. ``correlate_with`` is the target of the
    "Does sharpness predict generalization?" section (:mod:`reports.correlation`); giving it shows the
    section for any runs, else it appears (against test_error) when the runs form a zoo.
    """
    spec = sharpness if isinstance(sharpness, SharpnessSpec) else SharpnessSpec.parse(sharpness)
    metric = diversity_metric(diversity)
    if diversity_on not in ("ood", "test"):
        raise InputError(f"--diversity-on {diversity_on!r}: use ood (corrupted data) or test (clean test split)")
    if correlate_with is not None:
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
    # Notes on the numbers shown, and the measurements the runs lack (with the command that stores each).
    notes = skipped + ([split_note] if split_note else []) + criterion_counts(runs)
    not_measured = [str(missing) for missing in missing_measurements(results, runs, sharpness=spec,
                                                                     diversity=diversity, on=diversity_on,
                                                                     combine=combine)]
    notes += mixed_settings(results, groups, spec)
    notes += partial_corruptions(results, runs)
    mark_folder(out, "report")  # everything is checked: the first write
    writer = _Writer(out, results, runs, group_by, combine, formats)
    common = {"group_by": group_by, "combine": combine, "formats": formats}

    sections: list[pages.Section] = []
    correlation = None
    if correlate_with is not None or forms_a_zoo(runs, group_by):
        correlation = write_correlations(results, runs, writer.tables_dir, writer.figures_dir,
                                         target=correlate_with or "test_error", combine=combine, formats=formats)
        _sort(correlation.notes, notes, not_measured)
        if correlation.tables:
            sections.append(writer.correlation_section(correlation))
    # "How good is a single basin?": only when the runs hold a construction besides plain deep ensembles
    single_basin = write_single_basin(results, runs, writer.tables_dir, writer.figures_dir, combine=combine,
                                      formats=formats)
    _sort(single_basin.notes, notes, not_measured)
    if single_basin.written:
        sections.append(writer.single_basin_section(single_basin))

    summary = summary_table(results, runs, group_by=group_by, sharpness=spec, combine=combine)
    if summary.mean.shape[1]:
        numbers, cells, title = headline_table(summary, spec)
        files = write_table(writer.tables_dir, "headline", numbers, joined(cells), title)
        writer.tables += files
        sections.append(pages.Section("summary", f"Summary by {group_by}",
                                      (pages.Block(tables=(pages.table(cells, title, files, out),)),)))
    else:
        not_measured.append("summary table skipped: no run has results rows")

    points = tradeoff_points(results, sharpness=spec, diversity=diversity, on=diversity_on, combine=combine,
                             group_by=group_by)
    points = points[(points["sharpness"] > 0) & (points["diversity"] > 0)]
    if len(points) >= MIN_TRADEOFF_POINTS:
        fitted = fits_by_group(points["sharpness"], points["diversity"], points["group"])
        fits = {group: fitted.get(group, f"no run has both {spec} and {metric}") for group in group_order(groups)}
        description = diversity_description(metric, diversity_on)
        numbers, text, title = beta_table(fits, group_by, sharpness=str(spec), diversity=description)
        beta = writer.table(text, title, write_table(writer.tables_dir, "tradeoff-beta", numbers, text, title))
        figures = [plots.plot_tradeoff(results, writer.figures_dir, sharpness=spec, diversity=diversity,
                                       on=diversity_on, colour=colour, **common)
                   for colour in ("eir", "member_accuracy")]
        shown = [writer.figures(rendered, name, not_measured)
                 for rendered, name in zip(figures, ("tradeoff-eir", "tradeoff-member-accuracy"))]
        writer.rendered.update(zip(("tradeoff-eir", "tradeoff-member-accuracy"), figures))
        reading = (f"Sharpness: {spec.description}, the members' mean; diversity: {description}. "
                   + _tradeoff_reading(fits, group_by))
        blocks = [pages.Block(figures=tuple(shown[0]), tables=(beta,), text=reading)]
        if shown[1]:
            blocks.append(pages.Block(figures=tuple(shown[1])))
        sections.append(pages.Section("tradeoff", "Sharpness–diversity trade-off", tuple(blocks)))
    elif (runs[RUN_PREFIX + "n_members"] > 1).sum() >= MIN_TRADEOFF_POINTS:  # ensembles that could have had one
        notes.append(f"no trade-off: {len(points)} ensemble(s) have both {spec} and {metric} with positive values, "
                     f"and a trade-off relates {MIN_TRADEOFF_POINTS} or more")

    paired = write_paired_comparisons(results, runs, writer.tables_dir, combine=combine)  # on the same seed sets
    if paired is not None:
        writer.tables += paired.files
        _sort(paired.notes, notes, not_measured)
        sections.append(pages.Section("paired", "Paired comparisons", (pages.Block(
            tables=(pages.table(paired.text, paired.title, paired.files, out),)),)))

    corrupted = writer.corrupted_blocks(baseline, not_measured)
    if corrupted:
        sections.append(pages.Section("corruptions", "Accuracy under corruption", tuple(corrupted)))

    more = []
    if summary.mean.shape[1]:
        files = write_group_table(writer.tables_dir, summary)
        writer.tables += files
        everything = pages.table(summary.text(summary.decimals()), summary.title, files, out)
        more.append(pages.Block(figures=tuple(writer.figures(plots.plot_method_comparison(results, writer.figures_dir,
                                                                                          **common),
                                                             "methods", not_measured)),
                                tables=(everything,)))
    for name, draw in (("ensemble-size", plots.plot_ensemble_size), ("reliability", plots.plot_reliability)):
        shown = writer.figures(draw(results, writer.figures_dir, **common), name, not_measured)
        if shown:
            more.append(pages.Block(figures=tuple(shown)))
    if more:
        sections.append(pages.Section("quantities", "Every quantity", tuple(more)))

    connectivity = writer.connectivity_blocks(not_measured)
    if connectivity:
        sections.append(pages.Section("connectivity", "Connectivity between members", tuple(connectivity)))
    density = writer.figures(plots.plot_density(results, writer.figures_dir, formats=formats), "hessian-density",
                             not_measured)
    if density:
        sections.append(pages.Section("spectra", "Hessian spectra", (pages.Block(figures=tuple(density)),)))
    sections.append(writer.runs_section())

    facts = (("sharpness", f"{spec} — {spec.description}"), ("diversity", diversity_description(metric, diversity_on)),
             ("ensemble combination", str(combine)), ("grouped by", group_by),
             ("written", datetime.datetime.now().isoformat(timespec="seconds")))
    question = _question(runs, groups, group_by, correlation, single_basin)
    # the section that asks the page's question answers it under a name of what it shows
    sections = [dataclasses.replace(section, title=_HEADLINE_TITLES.get(section.key, section.title))
                if section.title == question else section for section in sections]
    page = pages.Page(title=question, lede=_lede(runs, groups, group_by), facts=facts, sections=tuple(sections),
                      notes=tuple(notes), not_measured=tuple(not_measured))
    index_text, readme_text = pages.render(page)
    index, readme = out / "index.html", out / "README.md"
    _write_text(readme, readme_text)
    _write_text(index, index_text)
    return Report(directory=out, index=index, readme=readme, tables=tuple(writer.tables),
                  figures=tuple(writer.figure_files), notes=tuple(notes + not_measured), rendered=writer.rendered,
                  page=page)


def _sort(section_notes: Iterable[str], notes: list[str], not_measured: list[str]) -> None:
    """A section's notes into the notes on its numbers and the measurements the runs lack: those
    name the ``sharpdiv`` command that would store what is missing."""
    for note in section_notes:
        (not_measured if "`sharpdiv " in note else notes).append(note)


class _Writer:
    """Writes the report's tables and figures into ``out`` and makes the page's parts of them,
    remembering every file written."""

    def __init__(self, out: Path, results: pd.DataFrame, runs: pd.DataFrame, group_by: str, combine, formats):
        self.out, self.results, self.runs, self.group_by = out, results, runs, group_by
        self.combine, self.formats = combine, formats
        self.tables_dir, self.figures_dir = out / TABLES_DIR, out / FIGURES_DIR
        self.tables: list[Path] = []
        self.figure_files: list[Path] = []
        self.rendered: dict[str, plots.Figures] = {}

    def table(self, text: pd.DataFrame, title: str, files: Sequence[Path], *, index: bool = True) -> pages.Table:
        self.tables += files
        return pages.table(text, title, files, self.out, index=index)

    def figures(self, rendered: plots.Figures, name: str, not_measured: list[str]) -> list[pages.Figure]:
        """The page's figures of one plot function's output (one per stem), or the reason it drew
        nothing added to ``not_measured``."""
        self.rendered.setdefault(name, rendered)
        if rendered.reason:
            not_measured.append(f"figure {name} skipped: {rendered.reason}")
            return []
        self.figure_files += rendered.paths
        stems = dict.fromkeys(path.with_suffix("") for path in rendered.paths)
        return [pages.figure([p for p in rendered.paths if p.with_suffix("") == stem], self.out,
                             _CAPTIONS.get(name, ""), stem.name) for stem in stems]

    # -- the sections ------------------------------------------------------------------------

    def correlation_section(self, correlation: CorrelationSection) -> pages.Section:
        """The zoo's rank correlations: the figure and the per-member table; the per-ensemble one
        when it has rows (each over enough ensembles, :data:`reports.correlation.MIN_RANKED`)."""
        self.tables += correlation.tables
        self.figure_files += correlation.figures
        text = correlation.text
        tables = []
        for points, what in (("members", "one point per member"), ("ensembles", "one point per ensemble")):
            rows = text[text["points"] == points].drop(columns="points")
            if not rows.empty:
                tables.append(pages.table(rows, f"Kendall τ-b [95% bootstrap interval] and Jiang et al.'s ψ, {what}",
                                          correlation.tables if not tables else (), self.out, index=False))
        figures = ()
        if correlation.figures:
            figures = (pages.figure(correlation.figures, self.out, "Each measure against the target, one marker "
                                    "per member; τ [bootstrap interval] and ψ in each panel's title."),)
        if correlation.settings_text is not None:
            tables.append(pages.table(correlation.settings_text,
                                      "How each measure and target moves with each setting alone: the mean Kendall τ "
                                      "with the setting's value over the groups of models that differ only in it "
                                      "[95% bootstrap interval over groups]", (), self.out, index=False))
        blocks = [pages.Block(figures=figures, text=correlation.reading)]
        blocks += [pages.Block(tables=(table,)) for table in tables]
        return pages.Section("correlation", CORRELATION_TITLE, tuple(blocks))

    def single_basin_section(self, section: SingleBasinSection) -> pages.Section:
        self.tables += section.tables
        self.figure_files += section.figures
        figures = (pages.figure(section.figures, self.out, section.caption),) if section.figures else ()
        tables = tuple(pages.table(text, title, section.tables if not i else (), self.out)
                       for i, (title, text) in enumerate(section.texts))
        return pages.Section("single-basin", SINGLE_BASIN_TITLE, (pages.Block(figures=figures),
                                                                  pages.Block(tables=tables)))

    def corrupted_blocks(self, baseline: str | None, not_measured: list[str]) -> list[pages.Block]:
        """Accuracy by severity (figure, then the ensemble's and the members' tables), and each
        per-corruption figure beside its table."""
        results, runs, group_by, combine = self.results, self.runs, self.group_by, self.combine
        common = {"group_by": group_by, "combine": combine, "formats": self.formats}
        tables = []
        for of in ("ensemble", "members"):
            table = severity_table(results, runs, group_by=group_by, baseline=baseline, of=of, combine=combine)
            if any(column not in ("ID", "OOD") for column in table.mean.columns):
                tables.append(self.table(table.text(), table.title, write_group_table(self.tables_dir, table)))
            else:
                not_measured.append(f"severity table of the {of} skipped: no run has corrupted-data accuracy rows")
        blocks = []
        severity = self.figures(plots.plot_severity(results, self.figures_dir, **common), "severity", not_measured)
        if severity or tables:
            blocks.append(pages.Block(figures=tuple(severity), tables=tuple(tables)))
        by_corruption = self.figures(plots.plot_corruptions(results, self.figures_dir, **common), "corruptions",
                                     not_measured)
        for metric_name, _, _ in CORRUPTION_QUANTITIES:
            numbers, text, title = corruption_table(results, runs, group_by=group_by, metric=metric_name,
                                                    combine=combine)
            if numbers.empty:
                continue
            files = write_table(self.tables_dir, f"corruptions-{metric_name}", numbers, text, title)
            _, shown, _ = corruption_table(results, runs, group_by=group_by, metric=metric_name, combine=combine,
                                           same_decimals=True)  # the files keep their format; the page aligns
            figure = [f for f in by_corruption if f.name == f"corruptions-{metric_name}"]
            blocks.append(pages.Block(figures=tuple(figure), tables=(self.table(shown, title, files),)))
        shown_figures = {f.name for block in blocks for f in block.figures}
        blocks += [pages.Block(figures=(f,)) for f in by_corruption if f.name not in shown_figures]
        return blocks

    def connectivity_blocks(self, not_measured: list[str]) -> list[pages.Block]:
        results, formats = self.results, self.formats
        blocks = []
        numbers, text, title = connectivity_table(results, self.runs, combine=self.combine)
        scatter = self.figures(plots.plot_barrier_vs_eir(results, self.figures_dir, combine=self.combine,
                                                         formats=formats), "barrier-eir", not_measured)
        if not numbers.empty:
            files = write_table(self.tables_dir, "connectivity", numbers, text, title)
            shown = fixed_decimals(numbers).set_index("run")
            blocks.append(pages.Block(figures=tuple(scatter), tables=(self.table(shown, title, files),)))
        elif scatter:
            blocks.append(pages.Block(figures=tuple(scatter)))
        for name, draw in (("barriers", plots.plot_barriers), ("interpolation", plots.plot_interpolation),
                           ("plane", plots.plot_plane)):
            shown_figures = self.figures(draw(results, self.figures_dir, formats=formats), name, not_measured)
            if shown_figures:
                blocks.append(pages.Block(figures=tuple(shown_figures)))
        return blocks

    def runs_section(self) -> pages.Section:
        """The run.json settings that differ between runs as a table (the others once, above it),
        then where each run's numbers come from."""
        runs = self.runs
        text = runs.set_index("run_label").map(_setting_text)
        settings_files = write_table(self.tables_dir, "runs", runs, text, "Runs and their run.json settings")
        settings = text.drop(columns="path")
        settings.columns = [column.removeprefix(RUN_PREFIX) for column in settings.columns]
        settings.index.name = "run"
        shared, differing = _shared_and_differing(settings)
        blocks = [pages.Block(text=shared, tables=(self.table(differing, "Settings that differ between the runs (every "
                                                              "setting: the table's files)", settings_files),))]
        numbers, text, title = provenance_table(self.results, runs)
        files = write_table(self.tables_dir, "provenance", numbers, text, title)
        shared, differing = _shared_and_differing(text)
        blocks.append(pages.Block(text=shared, tables=(self.table(differing, title, files),)))
        return pages.Section("runs", "Runs and provenance", tuple(blocks))


def _shared_and_differing(text: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The columns of ``text`` (one row per run) with one value in every row as one sentence
    (``lr 0.05; batch_size 128; not set: k, td``), and the table of the columns that differ."""
    if len(text) < 2:
        same = list(text.columns)
    else:
        same = [column for column in text.columns if text[column].astype(str).nunique(dropna=False) == 1]
    values = {column: str(text[column].iloc[0]) if len(text) else "" for column in same}
    given = "; ".join(f"{column} {value}" for column, value in values.items() if value not in ("", "nan", "None"))
    unset = [column for column, value in values.items() if value in ("", "nan", "None")]
    sentence = ("Every run: " + given + "." if given else "") + (f" Not set in any run: {', '.join(unset)}."
                                                                 if unset else "")
    return sentence.strip(), text[[column for column in text.columns if column not in same]]


def _tradeoff_reading(fits: dict, group_by: str) -> str:
    """The verdict of each group's β: the paper's trade-off is β > 0 (SharpBalance, Lu et al. 2024, §4.2)."""
    said = []
    for group, fit in fits.items():
        if not isinstance(fit, BetaFit):
            said.append(f"{group}: no β ({fit})")
            continue
        slope = f"{group}: β = {fit.beta:.2f} [{fit.ci_low:.2f}, {fit.ci_high:.2f}] over {fit.n} ensembles"
        if fit.verdict:
            said.append(f"{slope}, {fit.verdict}")
        elif fit.ci_low > 0:
            said.append(f"{slope}: the trade-off, flatter members make less diverse ensembles")
        else:
            said.append(f"{slope}: the opposite, flatter members make more diverse ensembles")
    fitted = [fit for fit in fits.values() if isinstance(fit, BetaFit)]
    lead = ("SharpBalance (Lu et al. 2024, §4.2) finds β > 0: flatter members, less diverse ensembles. "
            if fitted else f"No {group_by} has the 3 ensembles a slope β needs. ")
    return lead + "; ".join(said) + "."


def _question(runs: pd.DataFrame, groups: pd.Series, group_by: str, correlation: CorrelationSection | None,
              single_basin: SingleBasinSection) -> str:
    """The question the report answers first."""
    if correlation is not None and correlation.tables:
        return CORRELATION_TITLE
    if single_basin.written:
        return SINGLE_BASIN_TITLE
    order = group_order(groups)
    if len(order) > 1:
        if group_by == "method":
            from ensembles.training.settings import METHOD_NAMES

            names = [METHOD_NAMES.get(group, group) for group in order]
        else:
            names = order
        listed = (f"{len(order)} {group_by} groups" if len(names) > 6 else
                  ", ".join(names[:-1]) + f" and {names[-1]}")
        prefix = "" if group_by == "method" or len(names) > 6 else f"{group_by} = "
        return f"How do sharpness and diversity trade off across {prefix}{listed}?"
    if len(runs) == 1:
        return f"Accuracy, diversity and sharpness of {runs['run_label'].iloc[0]}"
    return f"Accuracy, diversity and sharpness of the {len(runs)} {order[0]} runs"


def _lede(runs: pd.DataFrame, groups: pd.Series, group_by: str) -> str:
    """What was compared: runs, members, models and data, and the groups with their run counts."""
    def values(field: str) -> str:
        column = RUN_PREFIX + field
        found = [str(v) for v in dict.fromkeys(runs[column].dropna())] if column in runs else []
        return " and ".join(found) if found else "unknown"

    members = sorted({int(n) for n in runs[RUN_PREFIX + "n_members"].dropna()}) if RUN_PREFIX + "n_members" in runs else []
    one = len(runs) == 1
    if members == [1]:
        size = "one model" + ("" if one else " each")
    elif members:
        size = ("an ensemble" if one else "ensembles") + " of " + "–".join(
            map(str, dict.fromkeys([members[0], members[-1]]))) + " members"
    else:
        size = "no members"
    what = f"{len(runs)} run{'' if one else 's'} ({size}) of {values('model')} on {values('dataset')}"
    if one:
        return what + "."
    counts = groups.value_counts()
    listed = ", ".join(f"{group} ({counts[group]})" for group in group_order(groups))
    return f"{what}, grouped by {group_by}: {listed}."


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
