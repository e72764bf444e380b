"""The layers hold: cli.py → reports/ → ensembles/ → landscape/, imports only downwards, no circles.

Every import statement of every module is read from its source (``ast``), function-level ones
included, as are ``importlib.import_module("...")`` calls with a literal name: an import hidden in
a function is still an arrow. ``sharpdiv.py`` (the notebook facade, above the command line) may
import every layer. A breach fails here, naming the file and line.
"""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("landscape", "ensembles", "reports")
SCRIPTS = ("cli", "sharpdiv")
RANK = {"landscape": 0, "ensembles": 1, "reports": 2, "cli": 3, "sharpdiv": 4}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted module name → source file, for every module of the layers."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for script in SCRIPTS:
        if (root / f"{script}.py").exists():
            modules[script] = root / f"{script}.py"
    return modules


def _imported_names(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the module's package, up level - 1 packages
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        # ``from a.b import c`` imports module a.b.c when c is a module, else a name of a.b
        return [f"{base}.{alias.name}" for alias in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


@functools.lru_cache(maxsize=None)
def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """``module -> {imported project module: first line}`` over all imports anywhere in the source."""
    modules = project_modules(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported_names(node, module, path.name == "__init__.py"):
                while name and name not in modules:  # a name inside a module → that module
                    name = name.rpartition(".")[0]
                if name and name != module and not module.startswith(name + "."):  # a package's own __init__ is no arrow
                    edges[name] = min(edges.get(name, node.lineno), node.lineno)
    return graph


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    rank = lambda module: RANK[module.split(".")[0]]  # noqa: E731
    return [f"{source} imports {target} (line {line}): {source.split('.')[0]} may not import {target.split('.')[0]}"
            for source, edges in sorted(graph.items()) for target, line in sorted(edges.items())
            if rank(target) > rank(source)]


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, {}):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    arrows = [f"{a} → {b} (line {graph[a][b]})" for a in component for b in component if b in graph.get(a, {})]
    return "circle: " + "; ".join(arrows)


def test_imports_only_run_downwards():
    upward = upward_imports(import_graph(ROOT))
    assert not upward, "\n".join(upward)


def test_no_module_imports_itself_through_others():
    graph = import_graph(ROOT)
    found = circles(graph)
    assert not found, "\n".join(describe(component, graph) for component in found)


def test_every_layer_is_seen():
    graph = import_graph(ROOT)
    assert {module.split(".")[0] for module in graph} == set(RANK)
    assert "landscape.alignment" in graph and "ensembles.studies.measurements" in graph


# ------------------------------------------------------------- the checks catch what they must


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for package in PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    root = write(tmp_path, {
        "landscape/maths.py": "def f():\n    from ensembles.models import zoo\n    return zoo\n",
        "ensembles/models/__init__.py": "",
        "ensembles/models/zoo.py": "import landscape.maths\n",
        "reports/tables.py": "import importlib\nplots = importlib.import_module('cli')\n",
        "cli.py": "from reports import tables\n",
    })
    graph = import_graph(root)
    assert upward_imports(graph) == [
        "landscape.maths imports ensembles.models.zoo (line 2): landscape may not import ensembles",
        "reports.tables imports cli (line 2): reports may not import cli",
    ]
    assert circles(graph) == [["cli", "reports.tables"], ["ensembles.models.zoo", "landscape.maths"]]


def test_a_circle_inside_one_layer_is_caught_and_relative_imports_resolve(tmp_path):
    root = write(tmp_path, {
        "ensembles/runs/__init__.py": "",
        "ensembles/runs/a.py": "from . import b\n",
        "ensembles/runs/b.py": "def g():\n    from .c import name\n",
        "ensembles/runs/c.py": "from ensembles.runs.a import something\n",
        "ensembles/runs/d.py": "from ensembles.runs import a\n",
    })
    graph = import_graph(root)
    assert upward_imports(graph) == []
    assert circles(graph) == [["ensembles.runs.a", "ensembles.runs.b", "ensembles.runs.c"]]
    assert graph["ensembles.runs.d"] == {"ensembles.runs.a": 1}
    assert "ensembles.runs.b → ensembles.runs.c (line 2)" in describe(circles(graph)[0], graph)


@pytest.mark.parametrize("source", ["import ensembles.models.zoo", "from ensembles import models",
                                    "from ensembles.models.zoo import build as make"])
def test_every_spelling_of_an_import_is_an_arrow(tmp_path, source):
    root = write(tmp_path, {"landscape/maths.py": source + "\n", "ensembles/models/__init__.py": "",
                            "ensembles/models/zoo.py": ""})
    assert len(upward_imports(import_graph(root))) == 1


def test_landscape_speaks_python_not_the_command_line():
    """The maths layer is called from Python too: its messages name arguments, never options such
    as ``--align`` or commands such as ``sharpdiv train``."""
    import re

    pattern = re.compile(r"(?<![\w-])--[a-z]|\bsharpdiv [a-z]")
    found = [f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}"
             for path in sorted((ROOT / "landscape").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.search(node.value)]
    assert not found, "\n".join(found)


# ------------------------------------------------------------- names used across modules are public


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_used_elsewhere(root: Path) -> list[str]:
    """Every use, in one module of the layers, of another module's leading-underscore name: ``from
    m import _name``, ``m._name`` on an imported module ``m``, or importing a module whose own name
    starts with ``_``. A leading underscore promises the name can change without looking elsewhere."""
    modules = project_modules(root)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        imported_modules: dict[str, str] = {}  # local name → project module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in RANK:
                if any(_private(part) for part in node.module.split(".")):
                    found.append(f"{module} (line {node.lineno}) imports the private module {node.module}")
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if target in modules:
                        imported_modules[alias.asname or alias.name] = target
                        if _private(alias.name):
                            found.append(f"{module} (line {node.lineno}) imports the private module {target}")
                    elif _private(alias.name):
                        found.append(f"{module} (line {node.lineno}) imports {alias.name} from {node.module}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] in RANK:
                        if any(_private(part) for part in alias.name.split(".")):
                            found.append(f"{module} (line {node.lineno}) imports the private module {alias.name}")
                        if alias.asname:
                            imported_modules[alias.asname] = alias.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                chain, base = [node.attr], node.value
                while isinstance(base, ast.Attribute):
                    chain.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in imported_modules | {package: package for package in RANK}:
                    owner = ".".join([imported_modules.get(base.id, base.id), *reversed(chain[1:])])
                    if owner in modules and owner != module:
                        found.append(f"{module} (line {node.lineno}) uses {node.attr} of {owner}")
    return sorted(set(found))


def test_a_name_used_by_another_module_is_public():
    found = private_names_used_elsewhere(ROOT)
    assert not found, "\n".join(found)


def test_every_spelling_of_a_private_name_from_elsewhere_is_caught(tmp_path):
    root = write(tmp_path, {
        "landscape/_helpers.py": "def check():\n    pass\n",
        "landscape/maths.py": "def _inner():\n    pass\n\ndef outer():\n    _inner()\n",
        "ensembles/models/__init__.py": "",
        "ensembles/models/zoo.py": "from landscape.maths import _inner\nfrom landscape import _helpers\n",
        "ensembles/models/build.py": "from landscape import maths\nimport landscape.maths\n\n"
                                     "def f():\n    return maths._inner, landscape.maths._inner, maths.outer\n",
    })
    assert private_names_used_elsewhere(root) == [
        "ensembles.models.build (line 5) uses _inner of landscape.maths",
        "ensembles.models.zoo (line 1) imports _inner from landscape.maths",
        "ensembles.models.zoo (line 2) imports the private module landscape._helpers",
    ]
