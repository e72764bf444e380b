"""Refresh a study page: its embedded tables, its figures and its fixture of stored rows.

    python docs/studies/refresh.py docs/studies/sharpbalance.md --root digits-sharpbalance

makes the page's fixture anew from the runs of its sweep found under ``--root`` (results-only
copies: run.json and the rows its tables read, no weights), checks that the report of the fixture
has the same tables as the report of the runs, then embeds those tables in the page and copies its
figures beside it, and copies the README's tables of study pages (``<!-- table:
<page>:tables/<name>.md -->``) from the pages. Without ``--root`` it re-embeds the tables and figures from the committed
fixture (after a change to the report's code). ``tests/test_docs_studies.py`` fails while a page
embeds a table the report would not write now. How pages, fixtures and the study block work:
``reports/study_pages.py``.

A script, not a ``sharpdiv`` command: it maintains this repository's own pages and fixtures
(``docs/studies/``), which an installed sharpdiv does not have. Run it from the repository root.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPOSITORY))  # this checkout's reports/, not an installed copy's

from landscape.errors import InputError  # noqa: E402
from reports.study_pages import refresh_copies, refresh_page  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="+", type=Path, help="study pages (docs/studies/<name>.md)")
    parser.add_argument("--root", type=Path, default=None,
                        help="the sweep's root folder (its --out): make the fixture anew from its runs")
    arguments = parser.parse_args(argv)
    if arguments.root is not None and len(arguments.pages) > 1:
        parser.error("--root belongs to one sweep: give one page with it")
    try:
        for page in arguments.pages:
            for line in refresh_page(page, arguments.root, root=REPOSITORY):
                print(line)
        for line in refresh_copies(REPOSITORY / "README.md", REPOSITORY / "docs" / "studies"):
            print(line)
    except InputError as error:
        print(f"refresh: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
