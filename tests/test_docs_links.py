"""Relative links in README.md, docs/ and examples/ point to files that exist in this repository."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"),
                    *(path for path in (ROOT / "examples").rglob("*") if path.is_file())])
# [text](target) in Markdown; the target ends at whitespace or ")" (an optional "title" follows)
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    targets = MARKDOWN_LINK.findall(text)
    return [target for target in targets
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) and not target.startswith("#")]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(document):
    broken = [target for target in relative_links(document)
              if not (document.parent / target.split("#")[0]).exists()]
    assert not broken, f"{document.relative_to(ROOT)} links to missing files: {broken}"


# Paths named in prose or comments: a top-level folder of this repository followed by a file name.
REPOSITORY_PATH = re.compile(r"(?<![\w./-])((?:docs|examples|landscape|ensembles|reports|tests|benchmarks)/[\w./-]*\.\w+)")
#: Files outside this repository that a reader cannot open (the project's own notes).
OUTSIDE = re.compile(r"REFERENCE\.md|shared/(docs|papers)/")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_named_repository_files_exist_and_nothing_outside_it_is_cited(document):
    text = document.read_text(encoding="utf-8", errors="replace")
    missing = [name for name in REPOSITORY_PATH.findall(text) if not (ROOT / name.rstrip(".")).exists()]
    assert not missing, f"{document.relative_to(ROOT)} names missing files: {missing}"
    assert not OUTSIDE.search(text), f"{document.relative_to(ROOT)} cites {OUTSIDE.search(text).group()}, not in the repository"


def test_the_link_pattern_finds_links():
    assert MARKDOWN_LINK.findall("see [the docs](docs/a.md#x) and [web](https://x.org \"t\")") == \
        ["docs/a.md#x", "https://x.org"]


#: What a reader cannot follow: the project's own notes, or a past issue or review item of it.
UNFOLLOWABLE = re.compile(r"\bREFERENCE\b|\b[Ii]ssues? #?\d{1,4}\b|^\s*#( --)? items? \d", re.MULTILINE)
SOURCES = sorted({*ROOT.glob("*.py"), *ROOT.glob("*.md"), *ROOT.glob("*.cfg"),
                  *(path for folder in ("landscape", "ensembles", "reports", "tests", "benchmarks", "examples", "docs")
                    for path in (ROOT / folder).rglob("*") if path.suffix in (".py", ".md", ".toml", ".txt"))}
                 - {Path(__file__).resolve()})


def test_code_and_docs_cite_papers_not_notes_or_issues():
    """Docstrings and comments cite the paper, equation or section, or give the reason themselves."""
    found = [f"{path.relative_to(ROOT)}:{text[:match.start()].count(chr(10)) + 1}: {match.group()!r}"
             for path in SOURCES for text in [path.read_text(encoding="utf-8", errors="replace")]
             for match in UNFOLLOWABLE.finditer(text)]
    assert not found, "\n".join(found)
