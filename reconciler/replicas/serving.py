"""``fleetkeeper serve`` on PostgreSQL: one replica's wiring (``reconciler.service`` calls it).

The HTTP API runs from the start on every replica. The election, the wake-ups and the
follower's refreshes run beside it; the reconcile loop and the repo watcher run only
for the terms this replica leads (``lead``), each term starting from the store.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from reconciler.api.context import ApiContext
from reconciler.api.metrics import Metrics
from reconciler.config import Config
from reconciler.errors import ConfigError
from reconciler.loop.reconciler import Reconciler
from reconciler.replicas import fencing
from reconciler.replicas.bus import Bus
from reconciler.replicas.follow import Follower
from reconciler.replicas.leader import Leadership
from reconciler.replicas.store import ReplicatedStore
from reconciler.source import GitSource
from reconciler.spec import JSON
from reconciler.store import open_store, redact_url
from reconciler.store.base import AuditEvent
from reconciler.store.postgres import connection_params
from reconciler.views.timefmt import iso

log = logging.getLogger(__name__)


class Replica:
    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        listeners: Sequence[Callable[[AuditEvent], None]],
    ) -> None:
        self.config = config
        if "options" in connection_params(config.database_url):
            # libpq then ignores PGOPTIONS, which carries the fencing setting below
            raise ConfigError(
                f"database {redact_url(config.database_url)}: drop options= from the URL "
                "(replicas set their session options through PGOPTIONS; put yours there)"
            )
        self.incarnation = uuid.uuid4().hex[:16]  # this process: a restart is a new one
        # Every libpq connection of the process (the store's pool too) carries the
        # incarnation: the fencing triggers compare it with the leader row.
        os.environ["PGOPTIONS"] = fencing.pgoptions(os.environ.get("PGOPTIONS"), self.incarnation)
        self.bus = Bus(config.database_url, self.incarnation)
        self.store = ReplicatedStore(open_store(config.database_url), metrics, listeners, self.bus)
        self.name = self.incarnation
        self._leadership: Leadership | None = None
        self._follower: Follower | None = None
        self._loop_parts: tuple[Reconciler, GitSource] | None = None

    def serve_api(
        self, ctx: ApiContext, reconciler: Reconciler, source: GitSource, name: str, url: str
    ) -> None:
        """Hook the API into the replica set: a webhook on a follower asks the leader to
        fetch; a follower is ready without a pass of its own (it serves the store)."""
        self.name = name
        leadership = Leadership(
            self.config.database_url, name, self.incarnation, self.config.leader_lease
        )
        leadership.url = url
        leadership.on_change = lambda leading: ctx.metrics.leader.set(1 if leading else 0)
        ctx.metrics.leader.set(0)
        bus = self.bus

        def trigger() -> None:
            if leadership.leading:
                source.trigger()
            else:  # the NOTIFY is a round trip to the database: off the event loop
                asyncio.get_running_loop().run_in_executor(None, bus.send, "fetch")

        def replicas() -> list[dict[str, JSON]]:
            return [
                {"name": r.name, "url": r.url, "leader": r.leader, "lastSeen": iso(r.last_seen)}
                for r in leadership.replicas
            ]

        ctx.trigger = trigger
        ctx.ready = lambda: bool(reconciler.first_pass_done) or not leadership.leading
        ctx.replicas = replicas
        self._leadership = leadership
        self._follower = Follower(
            self.store,
            ctx.hub,
            ctx.tokens,
            ctx.reports,
            leadership,
            reconciler.wake,
            reconciler.working.nodes_changed,
            source,
            reconciler.spec,
        )
        ctx.spec = self._follower.spec
        self._loop_parts = (reconciler, source)

    def parts(self, stop: asyncio.Event) -> dict[str, Coroutine[Any, Any, None]]:
        assert self._leadership is not None and self._follower is not None
        assert self._loop_parts is not None
        reconciler, source = self._loop_parts
        return {
            "election": self._leadership.run(stop),
            "wake-ups": self.bus.listen(stop, self._follower.on_message, self._follower.refresh),
            "follow": self._follower.run(stop),
            "lead": lead(self._leadership, reconciler, source, self.config.poll_interval, stop),
        }

    def close(self) -> None:
        self.bus.close()


async def lead(
    leadership: Leadership,
    reconciler: Reconciler,
    source: GitSource,
    poll_interval: float,
    stop: asyncio.Event,
) -> None:
    """Run the reconcile loop and the repo watcher while this replica leads; each term
    starts from the store (another leader may have moved every rollout meanwhile)."""
    while await leadership.wait_until(True, stop):
        term = asyncio.Event()
        reconciler.working.invalidate()
        tasks = [
            asyncio.create_task(reconciler.run(term), name="reconcile"),
            asyncio.create_task(source.watch(reconciler.wake, term, poll_interval), name="watch"),
        ]
        await leadership.wait_until(False, stop)
        term.set()  # a pass in flight finishes; its writes are refused once another leads
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, BaseException):
                log.error("%s stopped with an error", task.get_name(), exc_info=result)
