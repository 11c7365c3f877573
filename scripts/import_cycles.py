"""Print the import circles among the workspace's modules (strongly connected components).

Every ``import`` and ``from ... import`` counts, also inside functions and under
``TYPE_CHECKING``: a circle a reader has to follow is a circle, whenever it is resolved.
A module is an edge target both as itself and through its package (``from . import x``).

    uv run python scripts/import_cycles.py [TREE]   # exit status 1 when there is a circle
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules(root: Path = ROOT) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for src in sorted((root / "packages").glob("*/src")):
        for path in sorted(src.rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    # The nearest known module of each target (``a.b.C`` is module ``a.b``).
    edges = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            edges.add(target)
    return edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    known = modules(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
    # A package's ``__init__`` re-exports its modules: edges into a package are not circles of
    # their own, so packages are left out as targets of their own submodules.
    graph = {name: {t for t in imports(name, path, known) if not name.startswith(t + ".")} for name, path in known.items()}
    found = cycles(graph)
    for component in found:
        print("circle:", " <-> ".join(component))
    print(f"{len(found)} import circle(s) among {len(known)} modules")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
