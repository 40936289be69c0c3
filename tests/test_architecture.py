"""The house rules that keep mtv readable: imports between its packages flow one way."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mtv

ROOT = Path(mtv.__file__).parent


def _unit(module: str) -> str:
    """The unit of the import order a module belongs to: `mtv.train.trainer` -> `mtv.train`; a
    top-level module (`mtv.graph`) is a unit of its own."""
    return ".".join(module.split(".")[:2])


def import_graph(root: Path = ROOT) -> dict[tuple[str, str], list[str]]:
    """(importing unit, imported unit) -> where, over every `import` in the package, including
    those inside functions and `if TYPE_CHECKING:` blocks (a cycle hidden in a function is still
    a cycle). The package's own `__init__` (the public facade) is left out."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "mtv":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("mtv", "mtv_cli") and _unit(name) != _unit(module):
                    edges[(_unit(module), _unit(name))].append(f"{path.name}:{node.lineno}")
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan)."""
    successors: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        successors[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in successors[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(successors):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "mtv"
    for sub in ("a", "b", "c"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "a" / "x.py").write_text("from mtv.b.y import f\n")
    (package / "b" / "y.py").write_text("def f():\n    from mtv.c import g\n")
    (package / "c" / "z.py").write_text("import mtv.a.x\n")
    assert cycles(import_graph(package)) == [["mtv.a", "mtv.b", "mtv.c"]]
    (package / "c" / "z.py").write_text("import mtv.b\n")  # b <-> c only
    assert cycles(import_graph(package)) == [["mtv.b", "mtv.c"]]


def test_imports_between_mtv_packages_flow_one_way() -> None:
    edges = import_graph()
    assert edges, "the scan found no imports at all"
    found = cycles(edges)
    detail = [
        f"{a} -> {b} ({', '.join(where[:3])})"
        for component in found
        for (a, b), where in edges.items()
        if a in component and b in component
    ]
    assert not found, "import cycles between mtv packages:\n" + "\n".join(detail)


def test_the_library_never_imports_the_command_line() -> None:
    upward = {k: v for k, v in import_graph().items() if k[1].startswith("mtv_cli")}
    assert not upward, f"mtv imports mtv_cli: {upward}"
