"""All wiring of the agent in one place: config → supervisor, converger and their parts.

The daemon (``fleetkeeper-agent run``) and the local commands (``rollback``, ``status``)
build what they need here, so a new seam (another supervisor, a verifier of desired
documents) is chosen in one function, not in each caller.
"""

from __future__ import annotations

from collections.abc import Callable

from agent.board import Board
from agent.config import AgentConfig
from agent.converge import Converger
from agent.identity import read_identity
from agent.state import StateDir
from agent.supervise.child import ChildSupervisor
from agent.supervise.service import LaunchdSupervisor, SystemdSupervisor
from agent.supervise.supervisor import Supervisor


def make_supervisor(cfg: AgentConfig, state: StateDir) -> Supervisor:
    """The supervisor ``cfg.supervisor`` names: child processes (default), systemd, launchd."""
    if cfg.supervisor == "systemd":
        return SystemdSupervisor(state.root / "logs")
    if cfg.supervisor == "launchd":
        return LaunchdSupervisor(state.root / "logs")
    return ChildSupervisor(
        state, grace_seconds=cfg.stop_grace_seconds, backoff_cap=cfg.max_backoff_seconds
    )


def make_converger(
    cfg: AgentConfig,
    state: StateDir,
    sup: Supervisor,
    board: Board,
    superseded: Callable[[], bool] | None = None,
) -> Converger:
    """``superseded``: has a newer desired document arrived (an in-flight download stops)."""
    # Only child processes have an exit code the agent can read (for "exited at start").
    exit_code: Callable[[str], int | None] | None = (
        sup.exit_code if isinstance(sup, ChildSupervisor) else None
    )
    return Converger(
        install_root=cfg.install_root,
        state=state,
        supervisor=sup,
        board=board,
        keep_versions=cfg.keep_versions,
        exit_code=exit_code,
        workload_user=cfg.workload_user,
        superseded=superseded,
        retry_cap=cfg.max_backoff_seconds,
        identity=read_identity(state),  # the daemon created it at start (agent.identity)
    )


def make_observer(cfg: AgentConfig, state: StateDir) -> tuple[ChildSupervisor, Converger]:
    """For read-only views (``fleetkeeper-agent status``): a supervisor that only watches the
    recorded processes (``watch``), and a converger to observe through."""
    sup = ChildSupervisor(state)
    return sup, make_converger(cfg, state, sup, Board())
