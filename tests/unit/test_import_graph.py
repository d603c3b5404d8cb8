"""The import graph: every module imports, no cycle, the agent apart, the pure core pure.

The static graph comes from grimp (every ``import`` statement, call-time ones included;
``if TYPE_CHECKING:`` blocks left out, they never run); what a module really loads is
read from ``sys.modules`` in a fresh interpreter, which also runs package ``__init__``s.
"""

from __future__ import annotations

import graphlib
import json
import subprocess
import sys
from functools import cache

import grimp
import pytest

PACKAGES = ("reconciler", "agent", "schema", "fleetkeeper_common")
PURE = ("reconciler.plan", "reconciler.approval.decide")
# Loading any of these means the module can read files, processes, sockets or Git.
IO_MODULES = frozenset(
    {
        "sqlite3",
        "subprocess",
        "socket",
        "ssl",
        "select",
        "selectors",
        "asyncio",
        "shutil",
        "tempfile",
        "glob",
        "fcntl",
        "mmap",
        "urllib.request",
        "http.client",
        "httpx",
        "pygit2",
        "yaml",
        "psycopg",
        "starlette",
        "uvicorn",
        "watchfiles",
    }
)
IO_FIRST_PARTY = (
    "reconciler.store",
    "reconciler.config",
    "reconciler.source",
    "reconciler.revision",
    "reconciler.gitfiles",
    "reconciler.secrets",
    "reconciler.loop",
    "reconciler.api",
    "reconciler.approval.engine",
    "reconciler.approval.history",
    "reconciler.approval.signatures",
)


@cache
def graph(external: bool) -> grimp.ImportGraph:
    return grimp.build_graph(
        *PACKAGES,
        include_external_packages=external,
        exclude_type_checking_imports=True,
        cache_dir=None,
    )


def first_party_modules() -> list[str]:
    return sorted(graph(False).modules)


def pure_modules() -> list[str]:
    out: set[str] = set()
    for name in PURE:
        out.add(name)
        out |= graph(False).find_descendants(name)
    return sorted(out)


def loaded_by(modules: list[str]) -> set[str]:
    """What importing ``modules`` loads into a fresh interpreter (beyond its start-up set)."""
    code = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, f"importing {modules[0]} .. {modules[-1]} failed:\n{run.stderr}"
    return set(json.loads(run.stdout))


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    modules = first_party_modules()
    assert "reconciler.loop" in modules and "agent.cli" in modules  # the walk found the tree
    # both orders: a runtime cycle through a package __init__ fails only when entered
    # from one side (grimp's graph has no edge from a module to its package)
    for order in (modules, modules[::-1]):
        assert set(modules) <= loaded_by(order)


def test_no_import_cycle() -> None:
    g = graph(False)
    sorter = graphlib.TopologicalSorter(
        {m: g.find_modules_directly_imported_by(m) for m in g.modules}
    )
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        pytest.fail(f"import cycle: {cycle}")


def test_agent_never_imports_reconciler() -> None:
    chain = graph(False).find_shortest_chain("agent", "reconciler", as_packages=True)
    assert chain is None, f"agent imports reconciler: {' -> '.join(chain or ())}"
    agent = [m for m in first_party_modules() if m.split(".")[0] == "agent"]
    assert not {m for m in loaded_by(agent) if m.split(".")[0] == "reconciler"}


@pytest.mark.parametrize("module", pure_modules())
def test_pure_core_imports_no_io(module: str) -> None:
    forbidden = IO_MODULES | set(IO_FIRST_PARTY)

    def is_io(name: str) -> bool:
        return any(name == f or name.startswith(f + ".") for f in forbidden)

    loaded = sorted(m for m in loaded_by([module]) if is_io(m))
    assert not loaded, f"importing {module} loads {loaded}"
    g = graph(True)
    for target in sorted(forbidden):
        if target not in g.modules:
            continue
        chain = g.find_shortest_chain(module, target, as_packages=True)
        assert chain is None, f"{module} imports {target}: {' -> '.join(chain or ())}"


def test_the_purity_check_can_fail() -> None:
    """The same checks see the I/O of a shell module (else the table above proves nothing)."""
    loaded = loaded_by(["reconciler.approval.engine"])
    assert {"pygit2", "reconciler.config"} & loaded
    chain = graph(True).find_shortest_chain("reconciler.loop", "reconciler.store", as_packages=True)
    assert chain is not None
