"""The shape of the package, read from its source: no import cycles, no oversized modules, and
the fake servers of enrich.testing kept out of the package itself.

Every import statement counts: those inside functions, and those under ``if TYPE_CHECKING:``
(as in the Import Linter contract in pyproject.toml, which checks the layers themselves).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "enrich"
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> set[str]:
    """The enrich modules that module ``name`` imports, anywhere in its source. ``from X import
    y`` imports the module X.y when there is one (``from . import chat``), else X."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import enrich.x.Y` names a module's attr
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle of the graph, as the list of modules around it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(GRAPH):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_is_read():
    """The parser sees the package's real imports (a guard against a test that passes on an
    empty graph)."""
    assert "enrich.engine.core" in GRAPH["enrich.engine.items"]
    assert "enrich.formats.chat" in GRAPH["enrich.formats"]  # `from . import chat`
    assert "enrich.cli" in GRAPH["enrich.__main__"]


def test_no_import_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_module_is_over_600_lines():
    sizes = {path: len(path.read_text().splitlines()) for path in MODULES.values()}
    over = sorted(f"{path.relative_to(ROOT)} ({n})" for path, n in sizes.items() if n > MAX_LINES)
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(over)


def test_nothing_in_enrich_imports_enrich_testing():
    def is_testing(name: str) -> bool:
        return name == "enrich.testing" or name.startswith("enrich.testing.")

    offenders = sorted(
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if not is_testing(name)
        for target in targets
        if is_testing(target)
    )
    assert not offenders, "enrich.testing is for users and tests: " + ", ".join(offenders)
