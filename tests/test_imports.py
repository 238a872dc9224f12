"""The package's imports flow one way: no module imports itself back through others (imports inside
functions count: they only hide a cycle), and the rooms (``kaleido/<room>/``, top-level modules) form
no cycle either. Imports under ``if TYPE_CHECKING:`` never run and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import kaleido

PACKAGE = Path(kaleido.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def import_graph() -> dict[str, set[str]]:
    """Module → the kaleido modules it imports (a submodule's implicit import of its parents aside)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(filter(None, (resolve(alias.name) for alias in node.names)))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.update(filter(None, [resolve(node.module)]))
                found.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        graph[module] = found - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated last), or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def room(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_find_cycle_finds_a_cycle_and_only_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_module_imports_itself_back() -> None:
    graph = import_graph()
    assert "kaleido.shapes.datamodule" in graph and graph["kaleido.evaluate"], "the walk found the package"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_rooms_import_one_way() -> None:
    rooms: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        if room(module) == "kaleido":  # the package's front door imports everything
            continue
        rooms.setdefault(room(module), set()).update(room(m) for m in imported if room(m) not in (room(module), "kaleido"))
    assert find_cycle(rooms) is None, " -> ".join(find_cycle(rooms) or [])


def test_nothing_outside_shapes_imports_it() -> None:
    users = sorted(m for m, imported in import_graph().items() if room(m) != "kaleido.shapes" and any(room(i) == "kaleido.shapes" for i in imported))
    assert users == []
