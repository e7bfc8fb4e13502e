"""The package's shape, enforced: imports go down the layers, never round a circle,
and an import kept inside a function says why (docs/architecture.md)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "flowing"

# Lowest first. A module may import modules of its own layer or of lower ones.
LAYERS: list[set[str]] = [
    {"interrupts", "text", "version", "beside"},                   # words, one boundary
    {"errors", "records", "limits", "context", "results", "retry", "tasks", "graph"},  # model
    {"keys"},                                                       # content digests, step keys
    {"journal"},                                                    # the file and its store
    {"replay"},                                                     # replay or run, and why
    {"observe"},                                                    # events, logs, reports
    {"runners"},                                                    # where an attempt runs
    {"engine"},                                                     # the scheduler loop
    {"flow"},                                                       # the facade
    {"cli", "__main__", "__init__"},                                # the edges
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    return module.split(".")[0]


def _resolve(source: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The flowing modules (dotted, without the leading ``flowing.``) ``node`` imports."""
    if node.level == 0:
        if not (node.module or "").startswith("flowing"):
            return []
        base = (node.module or "").split(".")[1:]
    else:
        here = source.split(".") if path.name == "__init__.py" else source.split(".")[:-1]
        if source == "__init__":
            here = []
        up = node.level - 1
        base = (here[:len(here) - up] if up else here) + ((node.module or "").split(".")
                                                          if node.module else [])
    found = []
    for alias in node.names:
        sub = ".".join(base + [alias.name])
        found.append(sub if sub in MODULES else ".".join(base))
    return [m for m in found if m]


def _imports() -> list[tuple[str, str, int, bool, str]]:
    """(importer, imported, line, inside a function, the line's text) for every import."""
    rows = []
    for name, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        in_function: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(fn):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        in_function.add(id(inner))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(name, path, node)
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".", 1)[1] for a in node.names
                           if a.name.startswith("flowing.")]
            else:
                continue
            for target in targets:
                rows.append((name, target, node.lineno, id(node) in in_function,
                             lines[node.lineno - 1]))
    return rows


IMPORTS = _imports()


def test_every_module_has_a_layer():
    assert not sorted(m for m in MODULES if _part(m) not in RANK)


@pytest.mark.parametrize("row", IMPORTS, ids=lambda r: f"{r[0]}:{r[2]}->{r[1]}")
def test_imports_go_down_the_layers(row):
    importer, imported, line, _, _ = row
    assert RANK[_part(imported)] <= RANK[_part(importer)], (
        f"flowing/{importer} (line {line}) imports flowing.{imported}, a higher layer; "
        f"move the shared piece down (docs/architecture.md)")


def test_no_import_circle():
    graph = graphlib.TopologicalSorter()
    for importer, imported, *_ in IMPORTS:
        if importer != imported and not imported.startswith(importer + "."):
            graph.add(importer, imported)
    try:
        graph.prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")


def test_packages_import_down_only():
    """Whole packages form no circle either (engine -> runners -> engine would)."""
    graph = graphlib.TopologicalSorter()
    for importer, imported, *_ in IMPORTS:
        if _part(importer) != _part(imported):
            graph.add(_part(importer), _part(imported))
    graph.prepare()


def test_imports_inside_functions_say_why():
    """Every import inside a function — of flowing or of anything else — says why
    it is deferred (keeps ``import flowing`` fast, keeps an engine optional, runs
    on a worker by value) on its line or the line above; the ones that dodge a
    circle are gone, so the rest read alike."""
    silent = []
    for name, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        for fn in ast.walk(ast.parse(text)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line = lines[node.lineno - 1]
                    if "#" not in line and not lines[node.lineno - 2].strip().startswith("#"):
                        silent.append(f"flowing/{name} line {node.lineno}: {line.strip()}")
    assert not sorted(set(silent))
