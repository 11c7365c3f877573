"""No import circles anywhere in the workspace's packages (docs/architecture.md).

``scripts/import_cycles.py`` finds them (every import counts, also inside functions and under
``TYPE_CHECKING``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_cycles.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("import_cycles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(_script().cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_no_import_circle() -> None:
    script = _script()
    known: dict[str, Path] = script.modules()
    assert len(known) > 50  # the workspace's modules were found
    graph = {
        name: {t for t in script.imports(name, path, known) if not name.startswith(t + ".")}
        for name, path in known.items()
    }
    cycles: list[list[str]] = script.cycles(graph)
    assert cycles == []
