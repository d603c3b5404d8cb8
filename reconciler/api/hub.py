"""Desired-state documents served from memory, and the long-poll wake-ups.

The store is the truth; this is its read cache for the hot path: a conditional GET
compares ETags here and never queries the database. Writers (the reconcile loop, in
its own thread) call ``publish_from_thread(records)`` with the records they stored
(or ``notify_from_thread(node)``, which reads the record back); the bodies are encoded
in the writer's thread, installed on the event loop with one ``call_soon_threadsafe``
per ``PUBLISH_CHUNK`` entries as soon as they are built (and signed), and each changed
node's waiting pollers are woken through that node's own event: a wake-up costs the same
whether 10 or 10,000 agents are waiting. Chunks overlap signing with serving: the first
agents fetch their document while the rest are still being signed, instead of every
agent waiting for the whole fleet's signatures.

With a signer, each entry also holds the signed envelope; once past half its validity it is
re-signed on the next read and its ETag changes (``"<gen>-<digest>.<issuedAt>.<key>"``), so agents
holding the old one fetch the refresh (the same generation: not a change of state).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from fleetkeeper_common.canonical import canonical_json
from reconciler.signing import DocumentSigner, Signed
from reconciler.store.base import DesiredRecord, Store
from reconciler.threadsafe import call_in_loop

EMPTY_ETAG = '"0-empty"'
WAIT_JITTER = 0.1
# entries installed per event-loop callback on a fan-out: about 15 ms of encoding and
# signing, small enough that serving starts at once, large enough that 10,000 changed
# nodes take 40 callbacks, not 10,000
PUBLISH_CHUNK = 256


@dataclass(frozen=True)
class Entry:
    etag: str
    body: bytes  # the JSON document, encoded once
    generation: int
    document: Mapping[str, object] | None = None  # kept to re-sign it
    signed: Signed | None = None  # the envelope (with a signer)
    base_etag: str | None = None  # the store's ETag, before the signing stamp


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


class DesiredHub:
    def __init__(
        self,
        store: Store,
        records: Iterable[DesiredRecord] = (),
        signer: DocumentSigner | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.signer = signer
        # in the ETag too: a new signing key makes every agent fetch the re-signed document
        self._key_tag = signer.keyid[7:15] if signer is not None else ""
        self._clock = clock
        self._entries: dict[str, Entry] = {r.node: self._entry(r) for r in records}
        self._events: dict[str, asyncio.Event] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._rng = random.Random()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _entry(self, rec: DesiredRecord) -> Entry:
        document = dict(rec.document)
        body = canonical_json(document).encode()
        return self._signed(Entry(rec.etag, body, rec.generation, document))

    def _signed(self, entry: Entry) -> Entry:
        if self.signer is None or entry.document is None:
            return entry
        signed = self.signer.sign(entry.document, self._clock())
        base = entry.base_etag or entry.etag
        etag = f'{base[:-1]}.{signed.issued_at}.{self._key_tag}"'
        return Entry(etag, entry.body, entry.generation, entry.document, signed, base)

    def _fresh(self, node: str) -> Entry | None:
        """The node's entry, re-signed first when past half its validity."""
        entry = self._entries.get(node)
        if (
            entry is not None
            and entry.signed is not None
            and self._clock() >= entry.signed.refresh_at
        ):
            entry = self._entries[node] = self._signed(entry)
        return entry

    def etag(self, node: str) -> str:
        """The node's current ETag (no document built: the 304 path needs only this)."""
        entry = self._fresh(node)
        return entry.etag if entry is not None else EMPTY_ETAG

    def get(self, node: str) -> Entry:
        entry = self._fresh(node)
        if entry is None:
            document = empty_document(node)
            body = json.dumps(document, separators=(",", ":")).encode()
            # cached: the empty document is signed once per node, not per poll
            entry = self._entries[node] = self._signed(Entry(EMPTY_ETAG, body, 0, document))
        return entry

    def stored_etag(self, node: str) -> str | None:
        """The store's ETag of the document served to ``node`` (None: nothing stored)."""
        entry = self._entries.get(node)
        stored = None if entry is None else entry.base_etag or entry.etag
        return None if stored == EMPTY_ETAG else stored

    def publish(self, rec: DesiredRecord) -> None:
        """Install a new document and wake its pollers (call on the event loop)."""
        self._install([(rec.node, self._entry(rec))])

    def _install(self, entries: Sequence[tuple[str, Entry]]) -> None:
        for node, entry in entries:
            self._entries[node] = entry
            event = self._events.pop(node, None)
            if event is not None:
                event.set()

    def publish_from_thread(self, records: Sequence[DesiredRecord]) -> None:
        """Install many stored documents and wake their pollers (any thread), chunk by chunk
        as their entries are built."""
        loop = self._loop
        for start in range(0, len(records), PUBLISH_CHUNK):
            entries = [(r.node, self._entry(r)) for r in records[start : start + PUBLISH_CHUNK]]
            if loop is None:
                self._entries.update(entries)  # not serving yet: nobody waits
            else:
                call_in_loop(loop, self._install, entries)

    def notify_from_thread(self, node: str) -> None:
        """The loop's ``notify``: read the stored document here, publish on the event loop."""
        rec = self._store.desired(node)
        if rec is None:
            return
        loop = self._loop
        if loop is None:
            self._entries[node] = self._entry(rec)  # not serving yet: nobody waits
            return
        # signed here, in the loop's worker thread: the event loop only swaps the entry in
        call_in_loop(loop, self._install, [(node, self._entry(rec))])

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
