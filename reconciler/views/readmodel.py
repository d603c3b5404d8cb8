"""The fleet-status read model: the one place that reads the store for ``GET /v1/fleet``.

The API (``/v1/fleet``, ``/v1/releases``, the metrics), the dashboard and the loop's own
``Reconciler.fleet_status`` all call ``read_fleet_status``; the CLI reads its output over
HTTP. Blocking: run it in a thread from async code.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.loop.meta import TIP_STATUS
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import ReportRecord, Store
from reconciler.views.fleet_status import fleet_status


def read_fleet_status(
    store: Store,
    spec: FleetSpec | None,
    now: float,
    ttl: float,
    reports: Sequence[ReportRecord] | None = None,
) -> dict[str, JSON]:
    """``reports``: the served reconciler's report book (``ReportBook.records``), whose
    lastSeen is newer than the store's by up to its flush interval; None: the store's."""
    return fleet_status(
        spec,
        store.nodes(),
        store.rollouts(),
        reports if reports is not None else store.reports(),
        store.all_desired(),
        now,
        ttl,
        applied=store.applied_revision(),
        blocked=TIP_STATUS.read(store),
    )
