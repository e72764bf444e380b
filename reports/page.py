"""The report's page: sections of figures beside the tables that hold their numbers, rendered by the
jinja2 templates in ``reports/templates/`` into ``index.html`` and ``README.md``.

:mod:`reports.site` decides what the report says and in which order; this module holds the parts of
the page (small frozen dataclasses the templates read) and makes them from written files:
:func:`table` from a formatted table (a DataFrame of text) and the files it was written to,
:func:`figure` from the PNG and SVG of one figure. How the page looks (layout, sticky first columns,
figure sizes) is the templates' business.

A figure is shown at half the pixel size of its PNG (the report draws them at 150 dpi, so they are
sharp on a high-density screen), never wider than its column, and links to its SVG when one was
written. A table cell is a text, or a ``(value, detail)`` pair shown as the value with the detail
(an interval) small beneath it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

__all__ = ["Block", "Figure", "Link", "Page", "Section", "Table", "figure", "links", "render", "table"]

#: Figures at least this much wider than tall take the page's width; others sit beside their tables.
WIDE = 1.6


@dataclass(frozen=True)
class Link:
    """A file of the report, relative to it, and what kind of file it is (CSV, SVG ...)."""

    href: str
    kind: str


@dataclass(frozen=True)
class Table:
    """A table as the page shows it: ``header`` and ``rows`` of cells (the first column names the row
    and stays in view while the rest scrolls), the files it was written to, and its title."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple, ...]
    links: tuple[Link, ...] = ()

    @property
    def text_columns(self) -> tuple[bool, ...]:
        """Per column, whether it holds words (left-aligned, may wrap) rather than numbers."""
        return tuple(any(not _numeric(row[i]) for row in self.rows) for i in range(len(self.header)))


@dataclass(frozen=True)
class Figure:
    """One figure: the image shown (its PNG, else its SVG; empty when neither was written) at
    ``width`` × ``height`` CSS pixels (0 × 0: its own size), what the image links to (its SVG, else
    the PNG), every file of it, and its caption."""

    name: str
    image: str
    width: int
    height: int
    target: str
    links: tuple[Link, ...]
    caption: str = ""

    @property
    def wide(self) -> bool:
        return self.height > 0 and self.width / self.height >= WIDE


@dataclass(frozen=True)
class Block:
    """Figures beside the tables that hold their numbers, after a sentence that reads them."""

    figures: tuple[Figure, ...] = ()
    tables: tuple[Table, ...] = ()
    text: str = ""

    @property
    def figure_width(self) -> int:
        """The width of the widest figure, in CSS pixels: the figures' column beside the tables."""
        return max((figure.width for figure in self.figures), default=0)

    @property
    def wide(self) -> bool:
        """Whether the figures take the page's width (the tables then follow beneath them)."""
        return not self.tables or not self.figures or any(figure.wide for figure in self.figures)


@dataclass(frozen=True)
class Section:
    """A part of the report under its question: ``key`` is its anchor in ``index.html``."""

    key: str
    title: str
    blocks: tuple[Block, ...]
    text: str = ""


@dataclass(frozen=True)
class Page:
    """The whole report: its question (``title``), what was compared (``lede``), the report's
    settings (``facts``), the sections, the notes on its numbers, and what the runs did not measure
    (each with the command that would)."""

    title: str
    lede: str
    facts: tuple[tuple[str, str], ...]
    sections: tuple[Section, ...]
    notes: tuple[str, ...] = ()
    not_measured: tuple[str, ...] = ()
    readme: str = "README.md"


_KINDS = {".csv": "CSV", ".md": "Markdown", ".tex": "LaTeX", ".png": "PNG", ".svg": "SVG"}


def _kind(path: Path) -> str:
    if path.name.endswith("-runs.csv"):
        return "per-run CSV"
    if path.name.endswith("-pairs.csv"):
        return "pairs CSV"
    return _KINDS.get(path.suffix, path.suffix.lstrip(".") or path.name)


def links(paths: Sequence[Path], out: Path) -> tuple[Link, ...]:
    """Each of ``paths`` (files inside the report folder ``out``) as a link relative to ``out``."""
    return tuple(Link(Path(path).relative_to(out).as_posix(), _kind(Path(path))) for path in paths)


def table(text: pd.DataFrame, title: str, files: Sequence[Path], out: Path, *, index: bool = True) -> Table:
    """A formatted table (``text``: cells as text or ``(value, detail)`` pairs) as the page shows it;
    with ``index`` its index is the first column (named by the index's name)."""
    frame = text.reset_index() if index else text
    header = tuple("" if name is None else str(name) for name in frame.columns)
    rows = tuple(tuple(_cell(value) for value in row) for row in frame.itertuples(index=False))
    return Table(title=title, header=header, rows=rows, links=links(files, out))


#: How a number's cell begins: a digit, a sign, an interval's bracket, or the dash of a missing value.
_NUMBER_START = set("0123456789+-−—[.")


def _numeric(value) -> bool:
    text = value[0] if isinstance(value, tuple) else value
    return not text or text[0] in _NUMBER_START or text.lower() in ("nan", "inf", "-inf")


def _cell(value):
    if isinstance(value, tuple):
        return tuple("" if part is None else str(part) for part in value)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def figure(paths: Sequence[Path], out: Path, caption: str = "", name: str = "") -> Figure:
    """One figure from its files (the PNG and SVG of one stem): shown at half the PNG's pixels."""
    from PIL import Image

    paths = [Path(path) for path in paths]
    png = next((path for path in paths if path.suffix == ".png"), None)
    svg = next((path for path in paths if path.suffix == ".svg"), None)
    width = height = 0
    if png is not None:
        with Image.open(png) as image:
            width, height = (max(1, round(side / 2)) for side in image.size)
    relative = {path: path.relative_to(out).as_posix() for path in paths}
    shown = png or svg  # an SVG alone is shown as it is, at its own size
    return Figure(name=name or paths[0].stem, image=relative[shown] if shown else "", width=width, height=height,
                  target=relative[svg or png or paths[0]], links=links(paths, out), caption=caption)


def _environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"), undefined=jinja2.StrictUndefined,
        autoescape=lambda name: bool(name) and name.endswith(".html.jinja"), trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)
    environment.filters["code_spans"] = _code_spans
    return environment


def _code_spans(text: str):
    """Text whose `backticked` parts (the commands in the notes) are shown as code, escaped."""
    from markupsafe import Markup, escape

    pieces = str(text).split("`")
    return Markup("".join(f"<code>{escape(piece)}</code>" if i % 2 else str(escape(piece))
                          for i, piece in enumerate(pieces)))


def render(page: Page) -> tuple[str, str]:
    """``(index.html, README.md)`` of ``page``."""
    environment = _environment()
    return (environment.get_template("index.html.jinja").render(page=page),
            environment.get_template("README.md.jinja").render(page=page))
