"""fleetkeeper agent: polls the reconciler outbound and converges this node's workloads.

Never imports ``reconciler`` (an edge node installs the agent with few dependencies). The
module map and the direction of dependencies are in ``docs/architecture.md`` (Agent).
"""

from __future__ import annotations

__version__ = "0.1.0"
