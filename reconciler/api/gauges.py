"""The fleet gauges of ``/metrics`` from what the API holds in memory.

``fleet_gauges`` (reconciler/views/fleet_status.py) needs every node's name, whether it
is unlisted, its last report, and the rollout states. The names come from the token
cache and the desired hub, the reports from the report book; whether a registered node
is unlisted needs its record, so each verdict is kept until the node registers again
(its token changes) or the applied spec changes. A steady scrape reads nothing from the
store but the rollout states (from the loop's memory in a single reconciler) and the
tip status.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from reconciler.loop.meta import TIP_STATUS
from reconciler.spec import FleetSpec
from reconciler.store.base import NodeRecord, Store
from reconciler.views.fleet_status import FleetGauges, fleet_gauges, is_unlisted

if TYPE_CHECKING:  # the context holds an UnlistedVerdicts
    from reconciler.api.context import ApiContext

# more verdicts missing than this: one read of every node, not one read each
BULK_READ = 64


class UnlistedVerdicts:
    """node -> (its token hash, is_unlisted) under one spec."""

    def __init__(self) -> None:
        self._spec: FleetSpec | None = None
        self._verdicts: dict[str, tuple[str, bool]] = {}
        self._lock = threading.Lock()  # two scrapes at once run in two threads

    def unlisted(
        self, store: Store, spec: FleetSpec | None, registered: list[tuple[str, str]]
    ) -> set[str]:
        """The unlisted ones of ``registered`` (name, token hash) pairs."""
        with self._lock:
            return self._unlisted(store, spec, registered)

    def _unlisted(
        self, store: Store, spec: FleetSpec | None, registered: list[tuple[str, str]]
    ) -> set[str]:
        if spec is not self._spec:
            self._spec, self._verdicts = spec, {}
        if spec is None:
            return set()
        verdicts = self._verdicts
        missing = [
            n
            for n, token_hash in registered
            if n not in spec.nodes and verdicts.get(n, ("", False))[0] != token_hash
        ]
        records: list[NodeRecord] = []
        if len(missing) > BULK_READ:
            wanted = set(missing)
            records = [r for r in store.nodes() if r.name in wanted]
        else:
            records = [r for r in map(store.node, missing) if r is not None]
        for rec in records:
            verdicts[rec.name] = (rec.token_hash, is_unlisted(spec, rec))
        known = {n for n, _ in registered}
        for gone in [n for n in verdicts if n not in known]:
            del verdicts[gone]
        return {n for n, (_, unlisted) in verdicts.items() if unlisted}


def read_gauges(ctx: ApiContext) -> FleetGauges:
    """The fleet gauges of ``/metrics`` (blocking, the store: run in a thread)."""
    registered = ctx.tokens.pairs()
    store = ctx.store
    spec = ctx.spec()
    return fleet_gauges(
        spec,
        (n for n, _ in registered),
        ctx.unlisted.unlisted(store, spec, registered),
        ctx.hub.nodes(),
        (ctx.rollouts or store.rollouts)(),
        ctx.reports.snapshot(),
        ctx.clock(),
        ctx.settings.heartbeat_ttl,
        blocked=TIP_STATUS.read(store),
    )
