"""Is the agent itself installed under its ``installRoot`` (so it could be updated like a
workload)? Resolved paths on both sides: an install root reached through a symlink (e.g.
``/opt/fleetkeeper -> /data/fleetkeeper``) is still recognised as managed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import agent
from agent.layout import WorkloadLayout

DEFAULT_NAME = "fleetkeeper-agent"  # the conventional workload name of the agent itself


def agent_location() -> Path:
    """Where this agent's code really lives (resolved)."""
    return Path(os.path.realpath(Path(agent.__file__).parent))


def managed_workload(location: Path, install_root: Path) -> str | None:
    """The workload name under ``install_root`` that ``location`` belongs to, or None."""
    real = Path(os.path.realpath(location))
    root = Path(os.path.realpath(install_root))
    if root not in real.parents:
        return None
    return real.relative_to(root).parts[0]


@dataclass(frozen=True)
class SelfInfo:
    name: str | None  # the workload name the agent is installed as (None: not managed)
    version: str | None  # the version directory the running agent's code lives in


def who_am_i(install_root: Path) -> SelfInfo:
    name = managed_workload(agent_location(), install_root)
    if name is None:
        return SelfInfo(None, None)
    return SelfInfo(name, WorkloadLayout(install_root, name).version_of_path(agent_location()))
