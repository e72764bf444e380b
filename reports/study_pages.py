"""Study pages: documentation pages whose tables are a report's own Markdown, checked against stored rows.

A study page, ``docs/studies/<name>.md``, opens with a block that says how its report is made::

    <!-- study
    sweep: examples/digits-sharpbalance.toml
    keep: accuracy, eir, der
    figures: tradeoff-eir
    -->

``sweep`` is the sweep file (relative to the repository root) whose runs the page reports, with its
``[report]`` options, as ``sharpdiv sweep report`` uses them; any of :data:`REPORT_OPTIONS` may be
given here too and overrides the file's. ``keep`` names the metrics whose rows the page's fixture
holds (what its tables read), optionally narrowed by ``scopes`` (``ensemble``, ``member`` for every
member, ``pair``, ``ensemble@2`` ...) and ``splits`` (``train``, ``val``, ``test``; corrupted slices
are ``test``); ``figures`` the report figures the page shows. The page then embeds
tables of that report between markers, each the report's Markdown file verbatim::

    <!-- table: tables/summary.md -->
    ...
    <!-- end table -->

Beside the page, ``docs/studies/<name>/runs/<run>/`` holds the fixture: a results-only copy of each
run folder (:func:`ensembles.runs.run_folder.write_results_only_copy`: run.json and one results
part of the ``keep`` metrics' current rows, no weights), and ``docs/studies/<name>/<figure>.png``
the figures.

- :func:`check_page` writes the report's tables from the fixture (into a scratch folder) and
  returns each embedded table that differs from the file the report writes now, and each figure
  missing beside the page: a test runs it on every page.
- :func:`refresh_page` re-embeds the tables and copies the figures from that report. Given the
  sweep's root folder, it first makes the fixture anew from the runs found there, and checks that
  the report of the fixture has the same embedded tables as the report of the runs themselves, so
  a ``keep`` that leaves out rows a table reads is an error naming the table, never a page of other
  numbers.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ensembles.runs import run_folder
from ensembles.runs.files import atomic_path
from landscape.errors import InputError

__all__ = ["REPORT_OPTIONS", "StudyPage", "TableDifference", "check_copies", "check_page", "read_page",
           "refresh_copies", "refresh_page", "write_fixture"]

#: Options of :func:`reports.site.write_report` a study block may set (the sweep file's [report]
#: gives the rest; ``group_by`` is a comma list of the sweep's axes).
REPORT_OPTIONS = ("group_by", "sharpness", "diversity", "diversity_on", "baseline", "combine", "correlate_with")
_BLOCK_KEYS = ("sweep", "keep", "scopes", "splits", "figures")
_SWEEP_REPORT_KEYS = ("sharpness", "diversity", "diversity_on", "baseline", "combine")
_BLOCK = re.compile(r"<!--\s*study\s*\n(.*?)-->", re.DOTALL)
_TABLE = re.compile(r"(<!--\s*table:\s*(\S+?)\s*-->)(.*?)(<!--\s*end table\s*-->)", re.DOTALL)
_TABLE_FILE = re.compile(r"tables/[A-Za-z0-9_.-]+\.md")
RUNS_DIR = "runs"
#: A copy of a study page's embedded table in another document (the README): ``<!-- table:
#: <page>:tables/<name>.md -->`` ... ``<!-- end table -->``, the same text as in docs/studies/<page>.md.
_COPY = re.compile(r"(<!--\s*table:\s*([A-Za-z0-9_-]+):(tables/[A-Za-z0-9_.-]+\.md)\s*-->)(.*?)(<!--\s*end table\s*-->)",
                   re.DOTALL)


@dataclass(frozen=True)
class StudyPage:
    """A parsed study page: its file, the repository root, the sweep file, the metrics its fixture
    keeps, its figures, report option overrides and the report files its tables embed."""

    path: Path
    root: Path
    sweep: Path
    keep: tuple[str, ...]
    figures: tuple[str, ...]
    options: dict = field(default_factory=dict)
    tables: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    splits: tuple[str, ...] = ()

    def kept(self, rows):
        """The rows the fixture holds: of the ``keep`` metrics, and of the ``scopes`` (``member``:
        every ``member-<i>``, ``pair``: every ``pair-<i>-<j>``) and ``splits`` when the page names them."""
        if rows.empty:
            return rows
        chosen = rows["metric"].isin(self.keep)
        if self.scopes:
            patterns = [{"member": r"member-\d+", "pair": r"pair-\d+-\d+"}.get(scope, re.escape(scope))
                        for scope in self.scopes]
            chosen &= rows["scope"].str.fullmatch("|".join(patterns))
        if self.splits:
            chosen &= rows["split"].isin(self.splits)
        return rows[chosen]

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def folder(self) -> Path:
        """``docs/studies/<name>/``: the fixture's runs and the figures."""
        return self.path.parent / self.name

    @property
    def fixture(self) -> Path:
        return self.folder / RUNS_DIR

    def figure_file(self, figure: str) -> Path:
        return self.folder / f"{figure}.png"


@dataclass(frozen=True)
class TableDifference:
    """An embedded table (or figure) of a page that is not what the report writes now, and why."""

    page: Path
    table: str
    reason: str

    def __str__(self) -> str:
        return f"{self.page}: {self.table}: {self.reason}"


def read_page(path: str | os.PathLike, root: str | os.PathLike | None = None) -> StudyPage:
    """Parse a study page; ``root`` is the repository root the sweep path is relative to (default:
    the folder above ``docs/``)."""
    path = Path(path)
    root = Path(root) if root is not None else path.resolve().parent.parent.parent
    text = path.read_text(encoding="utf-8")
    block = _BLOCK.search(text)
    if block is None:
        raise InputError(f"{path} has no study block (<!-- study ... -->) naming its sweep file; see reports/study_pages.py")
    entries = {}
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        key, separator, value = line.partition(":")
        key = key.strip()
        if not separator or key not in (*_BLOCK_KEYS, *REPORT_OPTIONS):
            raise InputError(f"{path}: study block line {line.strip()!r}: use 'key: value' with key "
                             f"{', '.join(_BLOCK_KEYS)} or one of {', '.join(REPORT_OPTIONS)}")
        entries[key] = value.strip()
    if not entries.get("sweep"):
        raise InputError(f"{path}: the study block names no sweep file (sweep: examples/<file>.toml)")
    if not entries.get("keep"):
        raise InputError(f"{path}: the study block names no metrics to keep (keep: accuracy, eir, ...)")

    def listed(value):
        return tuple(part.strip() for part in value.split(",") if part.strip())

    options = {key: value for key, value in entries.items() if key in REPORT_OPTIONS}
    tables = tuple(match.group(2) for match in _TABLE.finditer(text))
    outside = [table for table in tables if not _TABLE_FILE.fullmatch(table)]
    if outside:  # only the report's own tables are embedded, never another file
        raise InputError(f"{path}: <!-- table: {outside[0]} -->: name a table of the report, tables/<name>.md")
    return StudyPage(path=path, root=root, sweep=root / entries["sweep"], keep=listed(entries["keep"]),
                     figures=listed(entries.get("figures", "")), options=options, tables=tables,
                     scopes=listed(entries.get("scopes", "")), splits=listed(entries.get("splits", "")))


def _report_options(page: StudyPage, paths: list[Path]) -> dict:
    """The keyword arguments of :func:`reports.site.write_report` for the page's runs: the sweep
    file's [report], as ``sharpdiv sweep report`` reads it, overridden by the study block."""
    from ensembles.studies.sweep import group_runs, read_sweep

    sweep = read_sweep(page.sweep)
    options = {key: sweep.report[key] for key in _SWEEP_REPORT_KEYS if key in sweep.report}
    options.update({key: value for key, value in page.options.items() if key != "group_by"})
    axes = [axis.strip() for axis in page.options["group_by"].split(",")] if "group_by" in page.options else None
    options["group_by"] = group_runs(sweep, paths, axes)
    return options


def _fixture_runs(page: StudyPage) -> list[Path]:
    runs = sorted(path for path in page.fixture.iterdir() if (path / run_folder.RUN_FILE).is_file()) \
        if page.fixture.is_dir() else []
    if not runs:
        raise InputError(f"{page.path}: no fixture runs in {page.fixture}; make them with "
                         f"`python docs/studies/refresh.py {page.path} --root SWEEP_ROOT`")
    return runs


def _write_report(page: StudyPage, runs: list[Path], scratch: Path, formats=("png",)):
    """The page's report over results-only copies of ``runs`` in ``scratch`` (grouping by several
    axes writes into run.json: neither the fixture nor a sweep's runs are touched) into
    ``scratch/report``; ``formats=()`` saves no figure (drawing them is most of a report's time)."""
    from reports.site import write_report

    copies = [run_folder.write_results_only_copy(run, scratch / RUNS_DIR / Path(run).name) for run in runs]
    return write_report(copies, scratch / "report", formats=formats, **_report_options(page, copies))


def _embedded(text: str) -> dict[str, str]:
    return {match.group(2): match.group(3) for match in _TABLE.finditer(text)}


def _differences(page: StudyPage, report_dir: Path) -> list[TableDifference]:
    text = page.path.read_text(encoding="utf-8")
    found = []
    for table, embedded in _embedded(text).items():
        written = report_dir / table
        if not written.is_file():
            found.append(TableDifference(page.path, table, "the report writes no such table from the fixture"))
        elif embedded.strip() != written.read_text(encoding="utf-8").strip():
            found.append(TableDifference(page.path, table, "differs from the table the report writes now"))
    for figure in page.figures:
        if not page.figure_file(figure).is_file():
            found.append(TableDifference(page.path, f"{figure}.png", f"missing beside the page ({page.figure_file(figure)})"))
    return found


def check_page(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[TableDifference]:
    """Every embedded table of the study page ``path`` that is not the report's Markdown as the
    report writes it now from the page's fixture, and every figure missing; empty when the page is current."""
    page = read_page(path, root)
    with tempfile.TemporaryDirectory(prefix="sharpdiv-study-") as scratch:
        report = _write_report(page, _fixture_runs(page), Path(scratch), formats=())
        return _differences(page, report.directory)


def write_fixture(page: StudyPage, runs: list[Path], out: Path) -> list[Path]:
    """Results-only copies of ``runs`` under ``out`` (new), holding the current rows of the metrics
    the page keeps."""
    if out.exists():
        raise InputError(f"{out} exists; the fixture is written into a new folder")
    out.mkdir(parents=True)
    copies = []
    for run in runs:
        rows = page.kept(run_folder.read_results(run, current_only=True))
        # a setting no kept row has is no setting of theirs (reads alike as absent or as null)
        rows = rows.dropna(axis=1, how="all")
        copies.append(run_folder.write_results_only_copy(run, out / Path(run).name, rows))
    return copies


def refresh_page(path: str | os.PathLike, sweep_root: str | os.PathLike | None = None,
                 root: str | os.PathLike | None = None) -> list[str]:
    """Embed the report's current tables into the study page ``path`` and copy its figures beside
    it; with ``sweep_root``, first replace the fixture with copies of the sweep's runs found there
    (after checking the fixture's report embeds the same tables as the runs' own report). Returns
    what was done, one line each."""
    page = read_page(path, root)
    done = []
    with tempfile.TemporaryDirectory(prefix="sharpdiv-study-") as scratch:
        scratch = Path(scratch)
        if sweep_root is not None:
            from ensembles.studies.sweep import read_sweep, sweep_runs

            runs = sweep_runs(read_sweep(page.sweep), sweep_root)
            if not runs:
                raise InputError(f"no run of {page.sweep} has finished members under {sweep_root}")
            full = _write_report(page, runs, scratch / "full", formats=())
            fixture = write_fixture(page, runs, scratch / "fixture")
            from_fixture = _write_report(page, fixture, scratch / "from-fixture")
            lacking = [table for table in page.tables
                       if not (from_fixture.directory / table).is_file()
                       or (full.directory / table).read_text(encoding="utf-8")
                       != (from_fixture.directory / table).read_text(encoding="utf-8")]
            if lacking:
                raise InputError(f"{page.path}: the fixture's report differs from the runs' report in "
                                 f"{', '.join(lacking)}; add the metrics those tables read to the study block's keep")
            if page.fixture.exists():
                shutil.rmtree(page.fixture)
            page.folder.mkdir(parents=True, exist_ok=True)
            shutil.copytree(scratch / "fixture", page.fixture)
            size = sum(file.stat().st_size for file in page.fixture.rglob("*") if file.is_file())
            done.append(f"fixture: {len(fixture)} runs from {sweep_root} into {page.fixture} ({size / 1024:.0f} KiB)")
            report = from_fixture  # the committed fixture holds these rows: its report is this one
        else:
            report = _write_report(page, _fixture_runs(page), scratch / "page")
        text = page.path.read_text(encoding="utf-8")

        def embed(match):
            table = report.directory / match.group(2)
            if not table.is_file():
                raise InputError(f"{page.path}: the report writes no {match.group(2)} from the fixture; "
                                 "remove the block or keep the metrics it reads")
            return f"{match.group(1)}\n{table.read_text(encoding='utf-8').strip()}\n{match.group(4)}"

        updated = _TABLE.sub(embed, text)
        if updated != text:
            with atomic_path(page.path) as temporary:
                temporary.write_text(updated, encoding="utf-8")
        done.append(f"tables: {len(page.tables)} embedded in {page.path}" + ("" if updated != text else " (unchanged)"))
        for figure in page.figures:
            drawn = report.directory / "figures" / f"{figure}.png"
            if not drawn.is_file():
                raise InputError(f"{page.path}: the report draws no {figure} figure from the fixture "
                                 f"({report.rendered.get(figure).reason if figure in report.rendered else 'unknown figure'})")
            page.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(page.figure_file(figure)) as temporary:
                shutil.copyfile(drawn, temporary)
            done.append(f"figure: {page.figure_file(figure)}")
        remaining = _differences(page, report.directory)
        if remaining:
            raise InputError("; ".join(str(difference) for difference in remaining))
    return done


def _page_table(pages: Path, document: Path, page: str, table: str) -> str:
    source = pages / f"{page}.md"
    embedded = _embedded(source.read_text(encoding="utf-8")) if source.is_file() else {}
    if table not in embedded:
        raise InputError(f"{document}: <!-- table: {page}:{table} --> copies a table {source} does not embed")
    return embedded[table]


def check_copies(path: str | os.PathLike, pages: str | os.PathLike) -> list[TableDifference]:
    """Every copy in the document ``path`` (the README) of a study page's table (``<!-- table:
    <page>:tables/<name>.md -->``) that is not the text the page under ``pages`` embeds now; the
    page itself is checked against its fixture by :func:`check_page`, so a copy is as current as it."""
    path, pages = Path(path), Path(pages)
    return [TableDifference(path, f"{match.group(2)}:{match.group(3)}", f"differs from {pages / match.group(2)}.md")
            for match in _COPY.finditer(path.read_text(encoding="utf-8"))
            if match.group(4).strip() != _page_table(pages, path, match.group(2), match.group(3)).strip()]


def refresh_copies(path: str | os.PathLike, pages: str | os.PathLike) -> list[str]:
    """Replace each copy of a study page's table in the document ``path`` with the page's current text."""
    path, pages = Path(path), Path(pages)
    text = path.read_text(encoding="utf-8")
    copies = list(_COPY.finditer(text))
    updated = _COPY.sub(lambda match: f"{match.group(1)}\n"
                        f"{_page_table(pages, path, match.group(2), match.group(3)).strip()}\n{match.group(5)}", text)
    if updated != text:
        with atomic_path(path) as temporary:
            temporary.write_text(updated, encoding="utf-8")
    return [f"copies: {len(copies)} tables of study pages in {path}" + ("" if updated != text else " (unchanged)")]
