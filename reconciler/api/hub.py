"""Desired-state documents served from memory, and the long-poll wake-ups.

The store is the truth; this is its read cache for the hot path: a conditional GET
compares ETags here and never queries the database. Writers (the reconcile loop, in
its own thread) call ``publish_from_thread(records)`` with the records they stored
(or ``notify_from_thread(node)``, which reads the record back); the bodies are encoded
in the writer's thread, installed on the event loop with one ``call_soon_threadsafe``
for the whole batch, and each changed node's waiting pollers are woken through that
node's own event: a wake-up costs the same whether 10 or 10,000 agents are waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleetkeeper_common.canonical import canonical_json
from reconciler.store.base import DesiredRecord, Store
from reconciler.threadsafe import call_in_loop

EMPTY_ETAG = '"0-empty"'
WAIT_JITTER = 0.1


@dataclass(frozen=True)
class Entry:
    etag: str
    body: bytes  # the JSON document, encoded once
    generation: int


def empty_document(node: str) -> dict[str, object]:
    """What a node gets before the reconciler has computed anything for it."""
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": node,
        "generation": 0,
        "revision": None,
        "approval": None,
        "workloads": [],
    }


def _entry(rec: DesiredRecord) -> Entry:
    body = canonical_json(rec.document).encode()
    return Entry(rec.etag, body, rec.generation)


class DesiredHub:
    def __init__(self, store: Store, records: Iterable[DesiredRecord] = ()) -> None:
        self._store = store
        self._entries: dict[str, Entry] = {r.node: _entry(r) for r in records}
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._rng = random.Random()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def etag(self, node: str) -> str:
        """The node's current ETag (no document built: the 304 path needs only this)."""
        entry = self._entries.get(node)
        return entry.etag if entry is not None else EMPTY_ETAG

    def get(self, node: str) -> Entry:
        entry = self._entries.get(node)
        if entry is None:
            body = json.dumps(empty_document(node), separators=(",", ":")).encode()
            entry = Entry(EMPTY_ETAG, body, 0)
        return entry

    def publish(self, rec: DesiredRecord) -> None:
        """Install a new document and wake its pollers (call on the event loop)."""
        self._install([(rec.node, _entry(rec))])

    def _install(self, entries: Sequence[tuple[str, Entry]]) -> None:
        for node, entry in entries:
            self._entries[node] = entry
            event = self._events.pop(node, None)
            if event is not None:
                event.set()

    def publish_from_thread(self, records: Sequence[DesiredRecord]) -> None:
        """Install many stored documents at once and wake their pollers (any thread)."""
        entries = [(r.node, _entry(r)) for r in records]
        loop = self._loop
        if loop is None:
            self._entries.update(entries)  # not serving yet: nobody waits
            return
        call_in_loop(loop, self._install, entries)

    def notify_from_thread(self, node: str) -> None:
        """The loop's ``notify``: read the stored document here, publish on the event loop."""
        rec = self._store.desired(node)
        if rec is None:
            return
        loop = self._loop
        if loop is None:
            self._entries[node] = _entry(rec)  # not serving yet: nobody waits
            return
        call_in_loop(loop, self.publish, rec)

    async def wait_change(self, node: str, etag: str, timeout: float) -> Entry:
        """The current entry once its ETag differs from ``etag``, or after ``timeout``."""
        entry = self.get(node)
        if entry.etag != etag or timeout <= 0 or self._closed:
            return entry
        event = self._events.get(node)
        if event is None:
            event = self._events[node] = asyncio.Event()
        # Each wait is cut short by up to 10 %, at random: agents that got a document at
        # the same moment (a fan-out) would otherwise all come back at the same moment,
        # every ``wait`` seconds, for ever (Kubernetes randomises watch timeouts alike).
        timeout *= 1 - self._rng.random() * WAIT_JITTER
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):  # no extra task per waiter (wait_for's)
                await event.wait()
        return self.get(node)

    def close(self) -> None:
        """Release every waiting poller (shutdown): they answer with what they have."""
        self._closed = True
        events, self._events = self._events, {}
        for event in events.values():
            event.set()
