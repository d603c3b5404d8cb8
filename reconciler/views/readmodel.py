"""The fleet-status read model: the one place that reads the store for ``GET /v1/fleet``.

The API (``/v1/fleet``, ``/v1/releases``, the metrics), the dashboard and the loop's own
``Reconciler.fleet_status`` all call ``read_fleet_status``; the CLI reads its output over
HTTP. Blocking: run it in a thread from async code.
"""

from __future__ import annotations

from reconciler.loop.meta import TIP_STATUS
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import Store
from reconciler.views.fleet_status import fleet_status


def read_fleet_status(
    store: Store, spec: FleetSpec | None, now: float, ttl: float
) -> dict[str, JSON]:
    return fleet_status(
        spec,
        store.nodes(),
        store.rollouts(),
        store.reports(),
        store.all_desired(),
        now,
        ttl,
        applied=store.applied_revision(),
        blocked=TIP_STATUS.read(store),
    )
