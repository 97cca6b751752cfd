"""The package's structure, as docs/design.md §14 states it: no import cycle between
cowmp's modules, no private name imported from another of them, loky imported by the
fallback alone, and every module opening with a docstring that says what it owns."""

from __future__ import annotations

import ast
from pathlib import Path

import cowmp

PACKAGE = Path(cowmp.__file__).parent
MODULES = {path.stem: ast.parse(path.read_text()) for path in PACKAGE.glob("*.py")}


def _imports(tree):
    """(module imported, names) for each import of the tree, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    yield node.module.split(".")[0], [a.name for a in node.names]
                else:  # from . import x, y
                    for alias in node.names:
                        yield alias.name, []
            elif node.level == 0 and node.module:
                yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


def _graph():
    return {name: {module for module, _ in _imports(tree) if module in MODULES}
            - {name, "__init__"} for name, tree in MODULES.items()}


def test_no_import_cycle_between_cowmp_modules():
    graph = _graph()
    cycles = []

    def visit(module, path):
        for nxt in sorted(graph[module]):
            if nxt == path[0]:
                cycles.append(" -> ".join([*path, nxt]))
            elif nxt not in path:
                visit(nxt, [*path, nxt])

    for module in graph:
        visit(module, [module])
    assert cycles == []


def test_the_import_graph_has_the_edges_the_code_has():
    assert "pool_manager" in _graph()["executor"]  # the graph has edges
    assert "executor" not in _graph()["pool_manager"]


def test_no_private_name_is_imported_from_another_cowmp_module():
    private = [f"{name}: from .{module} import {imported}"
               for name, tree in MODULES.items()
               for module, names in _imports(tree) if module in MODULES
               for imported in names if imported.startswith("_")]
    assert private == []


def test_only_the_fallback_imports_loky():
    importers = sorted(name for name, tree in MODULES.items()
                       if any(module.split(".")[0] == "loky" for module, _ in _imports(tree)))
    assert importers == ["fallback"]


def test_every_module_opens_with_a_docstring():
    missing = [name for name, tree in MODULES.items() if not ast.get_docstring(tree)]
    assert missing == []
