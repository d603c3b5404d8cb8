"""Desired-state documents served from memory, and the long-poll wake-ups.

The store is the truth; this is its read cache for the hot path: a conditional GET
compares ETags here and never queries the database. Writers (the reconcile loop, in
its own thread) call ``publish_from_thread(records)`` with the records they stored
(or ``notify_from_thread(node)``, which reads the record back); the bodies are encoded
in the writer's thread, installed on the event loop with one ``call_soon_threadsafe``
per ``PUBLISH_CHUNK`` entries as soon as they are built (and signed), and each changed
node's waiting pollers are woken through that node's own list of waiters: a wake-up costs
the same whether 10 or 10,000 agents are waiting. Chunks overlap signing with serving: the
first agents fetch their document while the rest are still being signed, instead of every
agent waiting for the whole fleet's signatures.

A wait that nothing wakes ends on an expiry wheel: one timer per 0.1 s slot, not one per
waiter, and a slot takes only its share of the waiters (``_slot_for``). Agents that began
their waits in the same second (a fleet started together, or all reconnecting after a
restart) would otherwise all be answered 304 in the same few seconds, and all ask again,
every ``wait`` seconds: at 8,000 agents that burst (2,700 answers and new requests a
second for 3 s) was every heartbeat over 100 ms. A full slot moves the wait earlier (to
no less than half of what was asked: a wait is "at most N seconds"), so one round spreads
a herd over half the wait, whatever the agents do; Kubernetes randomises its watch
timeouts for the same reason.

With a signer, each entry also holds the signed envelope; once past half its validity it is
re-signed on the next read and its ETag changes (``"<gen>-<digest>.<issuedAt>.<key>"``), so agents
holding the old one fetch the refresh (the same generation: not a change of state).

Entries are signed a chunk at a time (``DocumentSigner.sign_many``: one signature per
``PUBLISH_CHUNK`` documents, each envelope with its Merkle inclusion proof); a refresh is a
batch of one. Agents that announce ``proofs=merkle`` get that form; an agent of an earlier
release gets the single-signature envelope of the same signed document, made on its first
request and kept with the entry (``envelope``). Both forms carry the same stamps, so the
ETag names either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from fleetkeeper_common.canonical import canonical_json
from fleetkeeper_common.signing import Form
from reconciler.signing import DocumentSigner, Signed
from reconciler.store.base import DesiredRecord, Store
from reconciler.threadsafe import call_in_loop

EMPTY_ETAG = '"0-empty"'
WAIT_JITTER = 0.1  # each wait cut by up to 10 %, at random
SLOT_SECONDS = 0.1  # the expiry wheel's granularity
SPREAD_FLOOR = 0.5  # a full slot moves a wait earlier, to no less than half of it
MIN_PER_SLOT = 8  # expiries any slot takes, however few are waiting
SHORT_WAIT = 2.0  # shorter waits keep their own timer (tests, impatient clients)
# entries installed per event-loop callback on a fan-out: about 15 ms of encoding and
# signing, small enough that serving starts at once, large enough that 10,000 changed
# nodes take 40 callbacks, not 10,000
PUBLISH_CHUNK = 256


@dataclass(frozen=True)
class Entry:
    etag: str
    # the JSON document, encoded once; with a signer only on the first plain request
    # (``plain``): agents take the envelope, and encoding both was a third of a fan-out
    body: bytes | None
    generation: int
    document: Mapping[str, object] | None = None  # kept to re-sign it
    signed: Signed | None = None  # the envelope (with a signer)
    base_etag: str | None = None  # the store's ETag, before the signing stamp
    single: bytes | None = None  # the single-signature envelope, once an old agent asked


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
        self._entries: dict[str, Entry] = {}
        records = list(records)
        for start in range(0, len(records), PUBLISH_CHUNK):
            self._entries.update(self._built(records[start : start + PUBLISH_CHUNK]))
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}  # by node
        self._slots: dict[int, list[asyncio.Future[None]]] = {}  # expiry wheel, by slot
        self._waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._rng = random.Random()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _built(self, records: Sequence[DesiredRecord]) -> list[tuple[str, Entry]]:
        """The records' entries, signed as one batch."""
        entries = []
        for rec in records:
            # the record's own document, not a copy: nothing changes a stored document (a
            # copy per node was 8,000 dicts kept after each fan-out)
            document = rec.document
            body = canonical_json(document).encode() if self.signer is None else None
            entries.append(Entry(rec.etag, body, rec.generation, document))
        return list(zip((r.node for r in records), self._signed(entries), strict=True))

    def _signed(self, entries: Sequence[Entry]) -> list[Entry]:
        if self.signer is None:
            return list(entries)
        documents = [e.document or {} for e in entries]
        out = []
        for entry, signed in zip(
            entries, self.signer.sign_many(documents, self._clock()), strict=True
        ):
            base = entry.base_etag or entry.etag
            etag = f'{base[:-1]}.{signed.issued_at}.{self._key_tag}"'
            out.append(Entry(etag, entry.body, entry.generation, entry.document, signed, base))
        return out

    def _fresh(self, node: str) -> Entry | None:
        """The node's entry, re-signed first when past half its validity."""
        entry = self._entries.get(node)
        if (
            entry is not None
            and entry.signed is not None
            and self._clock() >= entry.signed.refresh_at
        ):
            (entry,) = self._signed([entry])
            self._entries[node] = entry
        return entry

    def nodes(self) -> list[str]:
        """The nodes that have a desired document (a copy: any thread may call it)."""
        return list(self._entries)

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
            (entry,) = self._signed([Entry(EMPTY_ETAG, body, 0, document)])
            self._entries[node] = entry
        return entry

    def plain(self, node: str, entry: Entry) -> bytes:
        """``entry``'s plain document, for a client that does not verify; encoded on first
        request and kept while ``entry`` is the node's current one."""
        if entry.body is not None:
            return entry.body
        body = canonical_json(entry.document).encode()
        if self._entries.get(node) is entry:
            self._entries[node] = replace(entry, body=body)
        return body

    def envelope(self, node: str, entry: Entry, form: Form) -> bytes:
        """``entry``'s signed body in ``form`` (``entry.signed`` set); the single form is
        made on first request and kept while ``entry`` is the node's current one."""
        assert entry.signed is not None and self.signer is not None
        if form == "batch":
            return entry.signed.body
        if entry.single is None:
            single = self.signer.single(entry.signed)
            if self._entries.get(node) is entry:
                self._entries[node] = replace(entry, single=single)
            return single
        return entry.single

    def stored_etag(self, node: str) -> str | None:
        """The store's ETag of the document served to ``node`` (None: nothing stored)."""
        entry = self._entries.get(node)
        stored = None if entry is None else entry.base_etag or entry.etag
        return None if stored == EMPTY_ETAG else stored

    def publish(self, rec: DesiredRecord) -> None:
        """Install a new document and wake its pollers (call on the event loop)."""
        self._install(self._built([rec]))

    def _install(self, entries: Sequence[tuple[str, Entry]]) -> None:
        for node, entry in entries:
            self._entries[node] = entry
            _release(self._waiters.pop(node, ()))

    def publish_from_thread(self, records: Sequence[DesiredRecord]) -> None:
        """Install many stored documents and wake their pollers (any thread), chunk by chunk
        as their entries are built."""
        loop = self._loop
        for start in range(0, len(records), PUBLISH_CHUNK):
            entries = self._built(records[start : start + PUBLISH_CHUNK])
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
            self._entries.update(self._built([rec]))  # not serving yet: nobody waits
            return
        # signed here, in the loop's worker thread: the event loop only swaps the entry in
        call_in_loop(loop, self._install, self._built([rec]))

    async def wait_change(self, node: str, etag: str, timeout: float) -> Entry:
        """The current entry once its ETag differs from ``etag``, or after ``timeout``
        (cut by up to 10 % at random, or more when many waits would end together)."""
        entry = self.get(node)
        if entry.etag != etag or timeout <= 0 or self._closed:
            return entry
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(node, []).append(waiter)
        self._expire_later(loop, waiter, timeout)
        self._waiting += 1
        try:
            await waiter
        finally:
            self._waiting -= 1
            waiters = self._waiters.get(node)
            if waiters is not None:  # else a publish took them all
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[node]
        return self.get(node)

    def _expire_later(
        self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None], timeout: float
    ) -> None:
        now = loop.time()
        # the 10 % cut at random: agents served at the same moment (a fan-out) drift apart
        want = now + timeout * (1 - self._rng.random() * WAIT_JITTER)
        if timeout < SHORT_WAIT:
            loop.call_at(want, _release, (waiter,))
            return
        slot = self._slot_for(want, now + timeout * SPREAD_FLOOR, timeout)
        waiters = self._slots.get(slot)
        if waiters is None:
            waiters = self._slots[slot] = []
            # the slot's start: no wait ends later than it was asked to
            loop.call_at(slot * SLOT_SECONDS, self._expire, slot)
        waiters.append(waiter)

    def _slot_for(self, want: float, floor: float, timeout: float) -> int:
        """The slot ``want`` falls in, or the latest earlier one (down to ``floor``) with
        room: a slot holds its share of every wait spread over the latest half of
        ``timeout``. None with room: ``want``'s own."""
        share = (self._waiting + 1) * SLOT_SECONDS / (timeout * (1 - SPREAD_FLOOR))
        room = max(MIN_PER_SLOT, math.ceil(share))
        first, slot = int(floor / SLOT_SECONDS) + 1, int(want / SLOT_SECONDS)
        for candidate in range(slot, first - 1, -1):
            if len(self._slots.get(candidate, ())) < room:
                return candidate
        return slot

    def _expire(self, slot: int) -> None:
        _release(self._slots.pop(slot, ()))

    def close(self) -> None:
        """Release every waiting poller (shutdown): they answer with what they have."""
        self._closed = True
        waiters, self._waiters = self._waiters, {}
        for each in waiters.values():
            _release(each)


def _release(waiters: Iterable[asyncio.Future[None]]) -> None:
    """End these waits (those not already over: answered, expired or disconnected)."""
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
