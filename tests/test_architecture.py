"""The import structure of the package, read from the source with ``ast`` (nothing is imported).

Every import counts: at module level, inside functions and under ``if TYPE_CHECKING:``, so that
no import placed in a function can hide a cycle. The harness is layered, bottom to top:

0. ``core``: plain, torch-free data and rules (records, tolerance, metrics, validation).
1. the stages: ``sides``, ``pairing``, ``comparison`` (with ``diagnose``), ``evidence``,
   ``locate``, and ``data`` (the datasets). They may import each other -- the run order is not
   an import order: the torch side hooks modules by the layer pairing before it runs, and
   pairing reads ours' parameters through ``sides.adapt`` -- but never in a cycle.
2. ``report``: the ``Report`` every front end returns, and its renderers.
3. ``pipelines``: the front ends ``compare``, ``compare_function`` and ``compare_training``.
4. ``testing`` (assertions and the pytest plugin) and ``corpus`` (the bug corpora and selftest).
5. ``cli``: the command line.

A module imports only its own layer and those below it. ``gradparity/__init__.py`` names its
exports as strings (PEP 562) and imports no gradparity module, so any module may read
``__version__`` from it. The model packages stand apart: ``gradparity.ours`` (NumPy only,
never torch) and ``gradparity.reference`` (torch mirrors, never the harness) may be imported by
any layer above ``core``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {
    "gradparity": ROOT / "gradparity",
    "gradparity.ours": ROOT / "ours",
    "gradparity.reference": ROOT / "reference",
}
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("sides", "pairing", "comparison", "evidence", "locate", "data"),
    ("report",),
    ("engine",),
    ("pipelines",),
    ("testing", "corpus"),
    ("cli",),
)
MODEL_PACKAGES = ("ours", "reference")
HEAVY = ("torch", "matplotlib")


@dataclass(frozen=True)
class Import:
    """One import statement's target: a gradparity module, or the top-level name of another."""

    target: str
    line: int
    type_checking: bool  # under ``if TYPE_CHECKING:``: read by type checkers, never run


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _sources() -> dict[str, Path]:
    """Every module of the harness and the two model packages: dotted name -> file."""
    found = {}
    for package, root in PACKAGE_DIRS.items():
        for path in sorted(root.rglob("*.py")):
            if package == "gradparity" and path.relative_to(root).parts[0] in MODEL_PACKAGES:
                continue  # not there today; the installed names come from ours/ and reference/
            found[_module_name(package, root, path)] = path
    return found


SOURCES = _sources()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The dotted module a ``from ... import`` names, with relative levels resolved."""
    if not node.level:
        return node.module or ""
    is_package = SOURCES[module].name == "__init__.py"
    base = module.split(".")[: None if is_package else -1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """What one statement loads: ``from pkg import sub`` loads the module pkg.sub if it is one."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _absolute(module, node)
    submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in SOURCES]
    return submodules if len(submodules) == len(node.names) else [base, *submodules]


def imports_of(module: str) -> list[Import]:
    """Every import statement of ``module``, wherever it stands in the file."""
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.extend(Import(t, node.lineno, type_checking) for t in _targets(module, node))
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(ast.parse(SOURCES[module].read_text(encoding="utf-8")), False)
    return found


GRAPH: dict[str, list[Import]] = {module: imports_of(module) for module in SOURCES}


def _edges(module: str, *, runtime_only: bool = False) -> list[str]:
    return [
        i.target
        for i in GRAPH[module]
        if i.target in SOURCES and not (runtime_only and i.type_checking) and i.target != module
    ]


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None: a depth-first search for a back edge."""
    state: dict[str, str] = {}  # "open" while on the search path, then "done"
    path: list[str] = []

    def search(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := search(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := search(start)):
            return cycle
    return None


def _part(module: str) -> str:
    """The harness part a module belongs to: its sub-package or top-level module name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int | None:
    """The module's layer index in ``LAYERS``; None for the root and the model packages."""
    part = _part(module)
    for index, names in enumerate(LAYERS):
        if part in names:
            return index
    return None


def reaches(start: str, *, runtime_only: bool) -> dict[str, list[str]]:
    """Every gradparity module ``start`` loads, with the import chain that leads to it."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        module = todo.pop()
        for nxt in _edges(module, runtime_only=runtime_only):
            if nxt not in chains:
                chains[nxt] = [*chains[module], nxt]
                todo.append(nxt)
    return chains


def heavy_imports(start: str) -> list[str]:
    """Each torch or matplotlib import that running ``start`` executes, as its import chain."""
    found = []
    for module, chain in reaches(start, runtime_only=True).items():
        for imp in GRAPH[module]:
            if not imp.type_checking and imp.target.split(".")[0] in HEAVY:
                found.append(" -> ".join([*chain, imp.target]) + f" (line {imp.line})")
    return found


def test_every_harness_part_has_a_layer():
    parts = {_part(m) for m in SOURCES if m.startswith("gradparity.") and layer_of(m) is None}
    assert parts <= {"", *MODEL_PACKAGES}, f"give {sorted(parts)} a layer in LAYERS"


def test_no_import_cycle_between_gradparity_modules():
    cycle = find_cycle({module: _edges(module) for module in SOURCES})
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", [m for m in SOURCES if m.startswith("gradparity.core")])
def test_core_loads_neither_torch_nor_matplotlib(module):
    assert heavy_imports(module) == []


def test_ours_never_imports_torch():
    for module in (m for m in SOURCES if m.startswith("gradparity.ours")):
        assert [c for c in heavy_imports(module) if " -> torch" in c] == []
        assert all(_part(t) == "ours" for t in _edges(module)), (module, _edges(module))


def test_reference_never_imports_the_harness():
    for module in (m for m in SOURCES if m.startswith("gradparity.reference")):
        outside = [t for t in _edges(module) if _part(t) != "reference"]
        assert outside == [], f"{module} imports {outside}"


def test_the_root_module_imports_no_gradparity_module():
    assert _edges("gradparity") == []


def test_each_module_imports_only_its_layer_and_those_below():
    upward = []
    for module in SOURCES:
        mine = layer_of(module)
        if mine is None:
            continue
        for imp in GRAPH[module]:
            theirs = layer_of(imp.target) if imp.target in SOURCES else None
            if _part(imp.target) in MODEL_PACKAGES and mine == 0:
                upward.append(f"{module}:{imp.line} imports the model package {imp.target}")
            elif theirs is not None and theirs > mine:
                upward.append(f"{module}:{imp.line} imports {imp.target} (a higher layer)")
    assert upward == [], "\n".join(upward)


# The checker itself, on small graphs whose answer is known.


def test_find_cycle_reports_the_cycle_it_finds():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_imports_inside_functions_and_type_checking_blocks_are_collected(tmp_path, monkeypatch):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from gradparity.core import errors\n"
        "def f():\n    import torch\n    from gradparity.sides import adapt\n"
    )
    monkeypatch.setitem(SOURCES, "gradparity.probe", source)
    found = {(i.target, i.type_checking) for i in imports_of("gradparity.probe")}
    assert {
        ("gradparity.core.errors", True),
        ("torch", False),
        ("gradparity.sides.adapt", False),
    } <= found


def test_a_heavy_import_two_modules_away_is_found(monkeypatch):
    monkeypatch.setitem(
        GRAPH, "gradparity.core.errors", [Import("gradparity.sides.adapt", 1, False)]
    )
    monkeypatch.setitem(GRAPH, "gradparity.sides.adapt", [Import("torch", 7, False)])
    assert heavy_imports("gradparity.core.errors") == [
        "gradparity.core.errors -> gradparity.sides.adapt -> torch (line 7)"
    ]
