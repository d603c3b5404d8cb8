"""The supervisor seam: who starts, stops and watches a workload's process.

``child`` (default) runs workloads as child processes of the agent; ``systemd`` and
``launchd`` hand them to the service manager and verify that a restart really replaced
the process (a reload that kept the old binary running is a failure).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from agent.procinfo import ProcInfo


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one workload process."""

    name: str
    argv: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)  # run.env and the runtime's extras
    user: str | None = None  # run.user / workloadUser; None: the agent's own user
    # JSON of more environment, read when the process is spawned: the ``as: env`` secrets
    # (agent.secrets), so a process record holds this path and never their values
    env_file: Path | None = None


class Supervisor(Protocol):
    def adopt(self, name: str, belongs: Callable[[ProcInfo], bool]) -> ProcInfo | None:
        """Take over a process left running by an earlier agent when ``belongs`` says it is
        ours; otherwise stop it. Returns what now runs (None: nothing)."""
        ...

    def start(self, spec: LaunchSpec) -> ProcInfo:
        """Start ``spec`` (the workload must not be running). Raises SupervisorError."""
        ...

    def stop(self, name: str) -> None:
        """Stop the workload and everything it started; no error when it is not running."""
        ...

    def restart(self, spec: LaunchSpec) -> ProcInfo:
        """Stop what runs, start ``spec``; the returned process is verified to be new."""
        ...

    def running(self, name: str) -> ProcInfo | None:
        """The live process of the workload, or None."""
        ...

    def set_auto_restart(self, name: str, on: bool) -> None:
        """Whether a crash is followed by a restart (off while a new version is proven)."""
        ...

    def tick(self) -> None:
        """Notice crashes and restart with backoff; called often by the agent's monitor."""
        ...

    def crash_note(self, name: str) -> str | None:
        """A note about the last crash for reports (None when it runs steadily)."""
        ...


@runtime_checkable
class HandoffSupervisor(Protocol):
    """A supervisor that can start a new version *beside* the running one (blue/green).

    Used for model servers that share their port (SO_REUSEPORT): ``handoff`` starts
    ``spec`` while the old process keeps serving; ``retire`` stops the old one once the new
    one is proven (or has failed). A supervisor without these methods restarts instead.
    """

    def handoff(self, spec: LaunchSpec) -> ProcInfo:
        """Start ``spec`` while the running process keeps running; returns the new one."""
        ...

    def retire(self, name: str, grace: float | None = None) -> None:
        """Stop the process a handoff left running (no error when there is none); ``grace``:
        seconds between SIGTERM and SIGKILL when longer than the supervisor's own."""
        ...

    def retiring(self, name: str) -> ProcInfo | None:
        """The old process a handoff left running, while it lives."""
        ...
