"""``fleetkeeper-agent rollback NAME``: flip a workload back to its previous version by hand.

The rollback is remembered in the ledger as a failed target (phase ``RolledBack``), so the
daemon does not re-apply the desired version until the desired document changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.board import Board
from agent.errors import ProveError, WorkloadError
from agent.installed import Installed
from agent.ledger import FailedTarget, Ledger
from agent.restart import Restarter
from agent.workload import Desired, Workload


def rollback(
    name: str,
    desired: Mapping[str, Any] | None,
    *,
    installed: Installed,
    restarter: Restarter,
    ledger: Ledger,
    board: Board,
) -> str:
    """Flip ``current`` to ``previous`` by hand, restart and prove; remembered as a failed
    target so the daemon does not re-apply it until the desired document changes."""
    layout = installed.layout(name)
    current, previous = layout.current_version(), layout.previous_version()
    if previous is None or not layout.is_complete(previous):
        raise WorkloadError(f"{name}: no previous version to roll back to")
    if current is None:
        raise WorkloadError(f"{name}: nothing is installed")
    document = Desired.parse(desired)
    entry = document.entry(name)
    fallback: Mapping[str, Any] = entry or {"name": name, "kind": "process"}
    old_doc = installed.launch_doc(name, previous, fallback)
    data = installed.data_dir(name)
    undoing = data.taken_for() == (previous, current)
    if undoing:  # the data copied before current's upgrade comes back (data.snapshot)
        restarter.sup.stop(name)
    layout.flip(layout.current, previous)
    layout.flip(layout.previous, current)
    restored = data.restore(previous, current) if undoing else None
    proof = restarter.restart_and_prove(old_doc, previous, restarter.sup.running(name), {})
    restarter.sup.set_auto_restart(name, True)
    message = f"rolled back by hand from {current} to {previous}: {proof.reason}"
    if restored:
        message = f"{message}; {restored}"
    if entry is not None and str(entry["version"]) != previous:
        w = Workload.parse(entry)
        key = document.key(entry)
        ledger.remember(
            name, FailedTarget(w.version, w.artifact.sha256, key, "RolledBack", message)
        )
        board.set(name, phase="RolledBack", message=message)
    else:
        # Rolled "back" onto the desired version itself: nothing to hold back any more.
        ledger.forget(name)
        board.set(name, phase=None, message=None)
    if not proof.ok:
        raise ProveError(message)
    return message
