"""fleetkeeper reconciler: approved revisions of a fleet repo rolled out to nodes."""

from __future__ import annotations

__version__ = "0.1.0"
