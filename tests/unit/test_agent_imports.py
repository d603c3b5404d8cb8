"""The agent's import graph: no cycle, no ``reconciler``, every module importable alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "fleetkeeper_common")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` imports anywhere (at call time and for typing too:
    a cycle hidden in a function or behind TYPE_CHECKING is still a cycle)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (a list of modules, first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            # A package's __init__ importing its own submodules is not a cycle of logic.
            if n.startswith(m + "."):
                continue
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_find_cycle_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_agent_has_no_import_cycle() -> None:
    mods = modules()
    graph = {m: imported(p, set(mods)) - {m} for m, p in mods.items()}
    # Importing agent.x.y runs agent.x first: a module importing its parent package is fine.
    graph = {m: {n for n in deps if not m.startswith(n + ".")} for m, deps in graph.items()}
    assert find_cycle(graph) is None, find_cycle(graph)


# One test per module, so pytest-xdist spreads the 60-odd interpreters over its workers.
@pytest.mark.parametrize("name", sorted(modules()))
def test_every_agent_module_imports_alone_without_the_reconciler(name: str) -> None:
    # A fresh interpreter per module: an import that only works after another module
    # was imported first (the sign of a cycle) fails here.
    check = (
        "import importlib, sys\n"
        "importlib.import_module(sys.argv[1])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'reconciler'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check, name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", (proc.stdout + proc.stderr)[-500:]
