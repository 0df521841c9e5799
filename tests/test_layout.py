"""The folder layout is the architecture: the import graph has no circle, nothing imports upward,
and no route module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("retrieval", "train", "serve")
# who may import whom: retrieval is the ground floor, train and serve stand on it, cli on all
ALLOWED = {
    "retrieval": {"retrieval"},
    "train": {"retrieval", "train"},
    "serve": {"retrieval", "serve"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["coins", *parts])


def package_files() -> list[Path]:
    files = [ROOT / "cli.py", ROOT / "__init__.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every coins module `path` imports, at any depth of the file (lazy imports count too),
    relative imports resolved; `from pkg import mod` counts as importing the module."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("coins")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("coins"):
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = package_files()
    known = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, known) for f in files}


def floor(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else None


def test_nothing_imports_upward() -> None:
    wrong = [
        f"{m} imports {t}"
        for m, targets in import_graph().items()
        if (f := floor(m)) is not None
        for t in targets
        if (g := floor(t)) is not None and g not in ALLOWED[f]
    ]
    assert not wrong, "\n".join(wrong)


def test_no_route_module_imports_another() -> None:
    graph = import_graph()
    routes = {m for m in graph if m.startswith("coins.serve.api.routes.")}
    wrong = [f"{m} imports {t}" for m in routes for t in graph[m] if t in routes]
    assert not wrong, "\n".join(wrong)


def test_module_level_import_graph_has_no_cycle() -> None:
    """Module-level imports only: a lazy import inside a function runs after loading is done."""
    files = package_files()
    known = {module_name(f) for f in files}
    graph: dict[str, set[str]] = {}
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        # statements at the top, except `if TYPE_CHECKING:` blocks (not imports at run time)
        top = ast.Module(body=[n for n in tree.body if not isinstance(n, ast.If)], type_ignores=[])
        name = module_name(f)
        graph[name] = {m for m in _module_level(f, top, known) if m != name}
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _module_level(path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & known
            found |= submodules
            if target in known and len(submodules) < len(node.names):  # names of the module
                found.add(target)
    return found


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a"}}, True),
    ],
)
def test_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycle: bool) -> None:
    assert (_find_cycle(graph) is not None) == cycle
