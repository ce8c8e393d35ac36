"""The package's import graph: no circles, and imports only point down the layers of
docs/architecture.md ("The import rule"). Every import counts, also one inside a function.

The checker is tested too: a graph with a circle or an upward edge must fail it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llmos_jupyter"

# (layer, module prefixes), top first; a module may import its own layer or any layer below.
LAYERS = [
    (5, ["llmos_jupyter", "llmos_jupyter.magics", "llmos_jupyter.comm"]),
    (4, ["llmos_jupyter.api"]),
    (
        3,
        [
            "llmos_jupyter.resources.manager",
            "llmos_jupyter.training",
            "llmos_jupyter.data",
            "llmos_jupyter.optimize",
            "llmos_jupyter.launch",
            "llmos_jupyter.serve",
        ],
    ),
    (2, ["llmos_jupyter.models", "llmos_jupyter.ops", "llmos_jupyter.catalog", "llmos_jupyter.pull"]),
    (
        1,
        [
            "llmos_jupyter.errors",
            "llmos_jupyter.argcheck",
            "llmos_jupyter.paths",
            "llmos_jupyter._version",
            "llmos_jupyter.display",
            "llmos_jupyter.widgets",
            "llmos_jupyter.kernel",
            "llmos_jupyter.resources",
            "llmos_jupyter.resources.hardware",
            "llmos_jupyter.resources.memory",
            "llmos_jupyter.resources.events",
            "llmos_jupyter.resources.jobs",
        ],
    ),
]


def layer_of(module: str) -> int:
    """The layer of the longest prefix in :data:`LAYERS` that names ``module`` or a package above it."""
    best = (-1, None)
    for layer, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best[0]:
                best = (len(p), layer)
    if best[1] is None:
        raise AssertionError(f"{module} has no layer: add it to LAYERS here and to docs/architecture.md")
    return best[1]


def import_graph(package: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``, from the source (nothing is imported)."""
    files = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files]
                targets = subs if len(subs) == len(node.names) else [base, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t in files and t != module)
    return graph


def problems(graph: dict[str, set[str]]) -> list[str]:
    """Circles (as ``a -> b -> a``) and upward imports (``a (layer 2) -> b (layer 4)``)."""
    out = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            if layer_of(b) > layer_of(a):
                out.append(f"upward: {a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})")
    state: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                out.append("circle: " + " -> ".join(path[path.index(nxt) :] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return out


def test_the_package_has_no_circles_and_no_upward_imports():
    graph = import_graph(PACKAGE)
    assert "llmos_jupyter.api" in graph and len(graph) > 40  # the whole package was read
    assert problems(graph) == []


@pytest.mark.parametrize(
    "extra, expected",
    [
        (("llmos_jupyter.errors", "llmos_jupyter.paths"), None),  # same layer, no circle: fine
        (("llmos_jupyter.paths", "llmos_jupyter.errors"), "circle"),
        (("llmos_jupyter.models.loading", "llmos_jupyter.api"), "upward"),
    ],
)
def test_the_checker_fails_on_a_circle_and_on_an_upward_import(extra, expected):
    graph = {
        "llmos_jupyter.errors": set(),
        "llmos_jupyter.paths": set(),
        "llmos_jupyter.api": {"llmos_jupyter.paths"},
        "llmos_jupyter.models.loading": {"llmos_jupyter.errors"},
    }
    graph[extra[0]].add(extra[1])
    if expected == "circle":
        graph["llmos_jupyter.errors"].add("llmos_jupyter.paths")
    found = problems(graph)
    assert [p.split(":")[0] for p in found] == ([] if expected is None else [expected])
