"""What a replica does with another replica's message: refresh what it serves from
memory (long-poll documents, node tokens, the report book, the applied revision's spec)
from the store, and, when it leads, wake the loop or fetch.

Staleness of ``lastSeen`` across replicas: a repeated heartbeat moves ``lastSeen`` in
the receiving replica's memory and reaches the database within ``FLUSH_SECONDS`` (5 s);
that flush is announced and the leader re-reads the reports at once (and every
``FLUSH_SECONDS`` anyway, should an announcement be lost). So the leader's view of any
node's ``lastSeen`` is at most ``FLUSH_SECONDS`` plus a wake-up older than the truth; a
changed report is durable and announced before it is answered. Stale detection stays
correct as long as ``heartbeatTTLSeconds`` exceeds the heartbeat plus that bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from reconciler.api.auth import NodeTokens
from reconciler.api.hub import DesiredHub
from reconciler.replicas.bus import Message
from reconciler.replicas.leader import Leadership
from reconciler.reportbook import FLUSH_SECONDS, ReportBook
from reconciler.revision import load_revision
from reconciler.source import GitSource
from reconciler.spec import FleetSpec
from reconciler.store.base import DesiredRecord, Store

log = logging.getLogger(__name__)

COALESCE_SECONDS = 0.05  # reports announced within this are re-read once


class Follower:
    def __init__(
        self,
        store: Store,
        hub: DesiredHub,
        tokens: NodeTokens,
        book: ReportBook,
        leadership: Leadership,
        wake: Callable[[], None],
        registered: Callable[[], None],
        source: GitSource,
        loop_spec: Callable[[], FleetSpec | None],
    ) -> None:
        self._store = store
        self._hub = hub
        self._tokens = tokens
        self._book = book
        self._leadership = leadership
        self._wake = wake
        self._registered = registered
        self._source = source
        self._loop_spec = loop_spec
        self._spec: FleetSpec | None = None
        self._spec_sha: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reports_due = False

    def on_message(self, message: Message) -> None:
        """(event loop) One message from another replica."""
        if message.kind == "desired":
            self._spawn(self.refresh_desired(message.nodes))
        elif message.kind == "nodes":
            self._spawn(self.refresh_nodes())
        elif message.kind == "reports":
            if not self._reports_due:
                self._reports_due = True
                self._spawn(self._reports_later())
        elif message.kind == "fetch" and self._leadership.leading:
            self._source.trigger()
        elif message.kind == "controls" and self._leadership.leading:
            self._wake()  # the pass reads the new control record from the store
        elif message.kind == "revision":
            self._spawn(self.refresh_spec())

    async def refresh(self) -> None:
        """Everything, from the store (after each (re)connection of the bus)."""
        await self.refresh_spec()
        await self.refresh_desired(None)
        await self.refresh_nodes()
        await self.refresh_reports()

    async def refresh_desired(self, nodes: Sequence[str] | None) -> None:
        """Install the stored documents of ``nodes`` (None: all) that differ from what is
        served, waking their long-polls."""

        def read() -> list[DesiredRecord]:
            if nodes is None:
                return list(self._store.all_desired())
            return [r for r in map(self._store.desired, nodes) if r is not None]

        for rec in await asyncio.to_thread(read):
            if self._hub.stored_etag(rec.node) != rec.etag:
                self._hub.publish(rec)

    def spec(self) -> FleetSpec | None:
        """The applied revision's spec: the loop's while leading, else the one loaded here."""
        if self._leadership.leading:  # until the term's first pass: the follower's
            return self._loop_spec() or self._spec
        return self._spec

    async def refresh_spec(self) -> None:
        """Load the spec of the revision the leader applied (fetching the mirror when it
        does not hold that commit yet). Not while leading: the loop has its own."""
        if self._leadership.leading:
            return
        applied = await asyncio.to_thread(self._store.applied_revision)
        if applied is None or applied.sha == self._spec_sha:
            return

        def load(sha: str) -> FleetSpec | None:
            if self._source.repository().get(sha) is None:
                self._source.fetch()
            return load_revision(self._source.repository(), sha).spec

        self._spec = await asyncio.to_thread(load, applied.sha)
        self._spec_sha = applied.sha

    async def refresh_nodes(self) -> None:
        records = await asyncio.to_thread(self._store.nodes)
        stored = {r.name: r.token_hash for r in records}
        for name in self._tokens.known_nodes() - stored.keys():
            self._tokens.remove(name)  # reset on another replica
        for name, token_hash in stored.items():
            self._tokens.set(name, token_hash)
        self._registered()
        if self._leadership.leading:
            self._wake()

    async def refresh_reports(self) -> None:
        newer = self._book.absorb(await asyncio.to_thread(self._store.reports))
        if newer and self._leadership.leading:
            self._wake()

    async def _reports_later(self) -> None:
        await asyncio.sleep(COALESCE_SECONDS)
        self._reports_due = False
        await self.refresh_reports()

    async def run(self, stop: asyncio.Event) -> None:
        """The leader re-reads the reports every ``FLUSH_SECONDS`` (lost announcements)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FLUSH_SECONDS)
            if self._leadership.leading and not stop.is_set():
                try:
                    await self.refresh_reports()
                except Exception:  # the database is down: the election steps down too
                    log.warning("cannot re-read the reports", exc_info=True)
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except Exception:
                log.warning("refresh after a replica message failed", exc_info=True)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
