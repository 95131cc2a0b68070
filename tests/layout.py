"""The import graph of the project's own packages, read from the source (nothing is imported).

Two tests use it: the layering rules (no import circle, imports point down the tree) and the
DVC dependencies (every module a stage can import is covered by that stage's ``deps``). Both
read every ``import`` statement, including those inside functions, because a lazy import is
still code the stage runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGES = ("common", "models", "pipeline")

# Layers, lowest first: a module may import its own layer or any lower one. The phases of the
# DAG share one layer (they may use each other's cores, never in a circle); the drivers (the
# thin stages and the Prefect flows) sit above them, and the CLI above everything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("common",),
    ("models",),
    ("pipeline.errors",),
    ("pipeline.io",),
    ("pipeline.params",),
    ("pipeline.cohort", "pipeline.sanity", "pipeline.augment", "pipeline.export"),
    ("pipeline.report",),
    ("pipeline.stages", "pipeline.flows"),
    ("pipeline.cli",),
)


# registry module -> the package whose modules it imports by listing the folder
DISCOVERED = {
    "models.registry": "models.zoo.",
    "pipeline.cohort.sources.registry": "pipeline.cohort.sources.",
}


def module_files(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the project's packages under ``root``."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (``a.b.c`` may be attribute ``c`` of ``a.b``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file (functions included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from a.b import c`` may import module a.b.c or name c of a.b
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                out.add(target)
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: project modules it imports}`` for every module under ``root``."""
    modules = module_files(root)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    # The registries find their plugins by listing a folder: imports the AST cannot see.
    for registry, folder in DISCOVERED.items():
        if registry in graph:
            graph[registry] |= {n for n in modules if n.startswith(folder) and n != registry}
    # A package's __init__ is executed by importing any module inside it: keep that edge too.
    for name in list(graph):
        parent = name.rpartition(".")[0]
        if parent in graph:
            graph[name].add(parent)
    return graph


def layer_of(module: str) -> int:
    """Index of ``module``'s layer in ``LAYERS`` (``ValueError`` for a module in none)."""
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    if module in PACKAGES:  # the bare package __init__ files
        return 0
    raise ValueError(f"module {module} is in no layer of LAYERS")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per import that points up the layers, or from one stage to another."""
    bad = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target in PACKAGES or module.startswith(target + "."):
                continue  # a package's own __init__
            if layer_of(target) > layer_of(module):
                bad.append(f"{module} imports {target}, a higher layer")
            elif module.startswith("pipeline.stages.") and target.startswith("pipeline.stages."):
                bad.append(f"{module} imports {target}: a stage never imports another stage")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles, each as the list of modules around it (Tarjan's strongly connected
    components of size > 1, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module reachable from ``start`` (itself included)."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen
