"""docs/tests.md stays true: every test file mirrors the source module it tests (or is a documented
cross-cutting one), the map lists each module's test files exactly, and every module is tested
somewhere; every other file in tests/ is a documented helper."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "ensembles", "reports")
TOP_LEVEL = ("cli.py", "sharpdiv.py")
_PATH = re.compile(r"`([\w./-]+)`")


def source_modules(root: Path) -> list[str]:
    """Every module of the packages (``__init__.py`` aside) and the top-level modules, as paths."""
    modules = [name for name in TOP_LEVEL if (root / name).is_file()]
    modules += sorted(path.relative_to(root).as_posix() for package in PACKAGES
                      for path in (root / package).rglob("*.py") if path.name != "__init__.py")
    return modules


def files_of_tests(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in (root / "tests").rglob("test_*.py"))


def mirrored_module(test: str, root: Path) -> str | None:
    """The source module ``tests/<folder>/test_<module>[_<topic>].py`` mirrors (the longest module
    name that fits), or None: ``tests/test_cli_single_basin.py`` mirrors ``cli.py``."""
    path = Path(test)
    folder = path.parent.relative_to("tests")
    name = path.stem.removeprefix("test_")
    candidates = TOP_LEVEL if folder == Path(".") else [p.name for p in (root / folder).glob("*.py")]
    fitting = [c for c in candidates if c != "__init__.py" and (name == c[:-3] or name.startswith(c[:-3] + "_"))
               and (root / folder / c).is_file()]
    return (folder / max(fitting, key=len)).as_posix() if fitting else None


def section(text: str, title: str) -> list[list[str]]:
    """The table rows under ``## title``, each a list of its cells."""
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip().strip("|").split("|") for line in body.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in row] for row in rows]


def map_problems(root: Path) -> list[str]:
    """Everything in which docs/tests.md and the files of ``root`` disagree, one line each."""
    text = (root / "docs" / "tests.md").read_text()
    rows = {_PATH.findall(cells[0])[0]: cells for cells in section(text, "The map")}
    cross = {_PATH.findall(cells[0])[0] for cells in section(text, "Cross-cutting tests")}
    helpers = {_PATH.findall(cells[0])[0] for cells in section(text, "Helpers")}
    modules, tests = source_modules(root), files_of_tests(root)
    problems = []
    mirrored: dict[str, list[str]] = {module: [] for module in modules}
    for test in tests:
        module = mirrored_module(test, root)
        if module is not None:
            mirrored[module].append(test)
        elif test not in cross:
            problems.append(f"{test} mirrors no source module: name it "
                            "tests/<package path>/test_<module>[_<topic>].py, or list it under "
                            "'Cross-cutting tests' in docs/tests.md")
    for module in modules:
        if module not in rows:
            problems.append(f"docs/tests.md has no row for {module}: add | `{module}` | "
                            + ", ".join(f"`{test}`" for test in mirrored[module]) + " | |")
            continue
        listed = _PATH.findall(rows[module][1])
        if sorted(listed) != sorted(mirrored[module]):
            problems.append(f"docs/tests.md lists {listed} for {module}, the files are {mirrored[module]}")
        also = rows[module][2] if len(rows[module]) > 2 else ""
        if not listed and not also:
            problems.append(f"{module} is tested nowhere: add its tests, or name the files that exercise it")
        for test in (path for path in _PATH.findall(also) if path.startswith("tests/")):
            if not (root / test).is_file():
                problems.append(f"docs/tests.md names {test} for {module}, which does not exist")
    for module in set(rows) - set(modules):
        problems.append(f"docs/tests.md has a row for {module}, which does not exist")
    for name in sorted(cross - set(tests)):
        problems.append(f"docs/tests.md lists the cross-cutting {name}, which does not exist")
    others = sorted(path.relative_to(root).as_posix() for path in (root / "tests").rglob("*.py")
                    if path.name != "__init__.py" and not path.name.startswith("test_"))
    for helper in others:
        if helper not in helpers:
            problems.append(f"{helper} is neither a test file nor a helper listed under 'Helpers' in docs/tests.md")
    for name in sorted(helpers - set(others)):
        problems.append(f"docs/tests.md lists the helper {name}, which does not exist")
    return problems


def test_docs_tests_md_is_the_map_of_the_test_files():
    problems = map_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_map_check_catches_each_kind_of_mismatch(tmp_path):
    files = {
        "landscape/maths.py": "", "landscape/errors.py": "", "landscape/extra.py": "", "cli.py": "",
        "tests/conftest.py": "", "tests/helper.py": "", "tests/stray.py": "",
        "tests/landscape/test_maths.py": "", "tests/landscape/test_maths_edges.py": "",
        "tests/landscape/test_other.py": "", "tests/test_cli.py": "", "tests/test_repository.py": "",
        "docs/tests.md": "\n## The map\n\n| module | tests | also |\n|---|---|---|\n"
                         "| `cli.py` | `tests/test_cli.py` | |\n"
                         "| `landscape/errors.py` | | |\n"
                         "| `landscape/maths.py` | `tests/landscape/test_maths.py` "
                         "| `tests/landscape/test_missing.py` |\n"
                         "| `landscape/gone.py` | | |\n"
                         "\n## Cross-cutting tests\n\n| `tests/test_repository.py` | the repository |\n"
                         "| `tests/test_removed.py` | gone |\n"
                         "\n## Helpers\n\n| `tests/conftest.py` | settings |\n| `tests/helper.py` | helpers |\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert map_problems(tmp_path) == [
        "tests/landscape/test_other.py mirrors no source module: name it "
        "tests/<package path>/test_<module>[_<topic>].py, or list it under 'Cross-cutting tests' in docs/tests.md",
        "landscape/errors.py is tested nowhere: add its tests, or name the files that exercise it",
        "docs/tests.md has no row for landscape/extra.py: add | `landscape/extra.py` |  | |",
        "docs/tests.md lists ['tests/landscape/test_maths.py'] for landscape/maths.py, the files are "
        "['tests/landscape/test_maths.py', 'tests/landscape/test_maths_edges.py']",
        "docs/tests.md names tests/landscape/test_missing.py for landscape/maths.py, which does not exist",
        "docs/tests.md has a row for landscape/gone.py, which does not exist",
        "docs/tests.md lists the cross-cutting tests/test_removed.py, which does not exist",
        "tests/stray.py is neither a test file nor a helper listed under 'Helpers' in docs/tests.md",
    ]
