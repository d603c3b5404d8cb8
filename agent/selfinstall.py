"""Is the agent itself installed under its ``installRoot`` (so it could be updated like a
workload)? Resolved paths on both sides: an install root reached through a symlink (e.g.
``/opt/fleetkeeper -> /data/fleetkeeper``) is still recognised as managed."""

from __future__ import annotations

import os
from pathlib import Path

import agent


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
