"""The last report of every node, in memory; durable writes only for what changed.

Most status reports are heartbeats that repeat the node's last report. Such a report
moves the node's ``lastSeen`` in memory and is answered at once; the moved ``lastSeen``
values are written to the store together, in one transaction every ``FLUSH_SECONDS``
(and at shutdown). A crash therefore loses at most ``FLUSH_SECONDS`` of ``lastSeen``
(after a restart a node looks that much older until its next heartbeat), never a report
that said something new.

A report that differs from the node's last one (a version, a phase, health, the
generation, a message) is stored durably *before* it is answered. Reports that arrive
while a commit is running wait and go together in the next transaction (group commit:
one fsync for many reports, as PostgreSQL's ``commit_delay`` or a WAL writer does).

The reconcile loop reads the reports from here (``snapshot``, ``records``), never from
the store, so Stale detection uses the in-memory ``lastSeen``. ``take_news`` hands it the
nodes whose reports are news since its last pass, so a pass re-plans only the rollouts
those nodes take part in; ``watch`` names nodes whose next heartbeat is news even when
it repeats (a rollout counts only reports received after the node was given its target).

Thread-safety: ``submit`` and the flusher run on the event loop; the loop's pass reads
from a worker thread. One lock guards the maps; nothing slow runs under it: parsing and
building the snapshots happen outside it, the lock only copies or swaps dict entries.
(A thread that holds a lock the event loop wants, while it waits for the GIL itself,
stalls every request: at 8,000 agents a snapshot built under the lock did that.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from fleetkeeper_common.canonical import canonical_json
from reconciler.groupcommit import GroupCommit
from reconciler.plan.observations import NodeReport
from reconciler.store.base import ReportRecord, Store

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0  # the most lastSeen a crash can lose (docs/server.md)


@dataclass(frozen=True)
class _Last:
    record: ReportRecord  # received_at here is the in-memory lastSeen
    text: str  # canonical JSON of the report, to recognise a repeat
    parsed: NodeReport


class ReportBook:
    def __init__(
        self,
        store: Store,
        records: Iterable[ReportRecord],
        ttl: float,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self.flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._last: dict[str, _Last] = {r.node: _entry(r) for r in records}
        # lastSeen per node (received_at of _last is that of the last *changed* report)
        self._seen: dict[str, float] = {n: e.record.received_at for n, e in self._last.items()}
        self._dirty: dict[str, float] = {}  # node -> lastSeen not yet in the store
        self._news: set[str] = set()
        self._watched: frozenset[str] = frozenset()
        # snapshot's values by node: (the parsed report, the lastSeen, the value given)
        self._made: dict[str, tuple[NodeReport, float, NodeReport]] = {}
        self._snap_lock = threading.Lock()
        self._changes: GroupCommit[tuple[ReportRecord, str], None] = GroupCommit(
            self._store_changes, "status report(s)"
        )

    # -- the API side (event loop) ------------------------------------------------------

    async def submit(self, record: ReportRecord) -> bool:
        """Take a report; True when it is news (the loop should plan again).

        A changed report is durable when this returns; a repeat only moved lastSeen.
        """
        text = canonical_json(record.report)
        with self._lock:
            last = self._last.get(record.node)
            if last is not None and last.text == text:
                seen = self._seen[record.node]
                back = record.received_at - seen > self._ttl / 3
                # a float in a dict: no new object that the garbage collector must track
                self._seen[record.node] = record.received_at
                self._dirty[record.node] = record.received_at
                # a node coming back from silence matters (Stale -> fresh) even unchanged
                news = back or record.node in self._watched
                if news:
                    self._news.add(record.node)
                return news
        await self._changes.submit((record, text))
        return True

    @property
    def commits(self) -> int:
        """Transactions of changed reports so far (several reports each under load)."""
        return self._changes.transactions

    def _store_changes(self, batch: Sequence[tuple[ReportRecord, str]]) -> list[None]:
        """One transaction for every changed report queued (worker thread), then memory."""
        self._store.put_reports([r for r, _ in batch])
        entries = [
            _Last(
                record, text, NodeReport.from_json(record.node, record.report, record.received_at)
            )
            for record, text in batch
        ]
        with self._lock:
            for entry in entries:
                record = entry.record
                self._last[record.node] = entry
                self._seen[record.node] = max(record.received_at, self._seen.get(record.node, 0.0))
                self._news.add(record.node)
                if self._dirty.get(record.node, record.received_at) <= record.received_at:
                    self._dirty.pop(record.node, None)  # the row holds this lastSeen now
        return [None] * len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush lastSeen every ``flush_seconds`` until ``stop``, then once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.flush_seconds)
            try:
                await asyncio.to_thread(self.flush)
            except Exception:  # the store is down: keep the values, try again later
                log.exception("cannot flush lastSeen")

    def flush(self) -> int:
        """Write every lastSeen not yet in the store, in one transaction; how many."""
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        if not dirty:
            return 0
        try:
            self._store.touch_reports(dirty)
        except Exception:
            with self._lock:  # put them back unless newer ones arrived meanwhile
                for node, at in dirty.items():
                    if self._dirty.get(node, at) <= at:
                        self._dirty[node] = at
            raise
        return len(dirty)

    # -- the loop side (any thread) -----------------------------------------------------

    def snapshot(self) -> dict[str, NodeReport]:
        """Every node's last report as the planner reads it (lastSeen from memory).

        A node's value is rebuilt only when its report or lastSeen moved since the last
        snapshot: a fan-out runs passes back to back, and rebuilding every node's value
        (``dataclasses.replace``) was a third of each pass's planning at 4,000 agents."""
        with self._lock:  # copies at C speed; the snapshot is built outside the lock
            last, seen = dict(self._last), dict(self._seen)
        with self._snap_lock:  # one builder at a time; the event loop never takes this lock
            made = self._made
            out: dict[str, NodeReport] = {}
            for n, e in last.items():
                at, hit = seen[n], made.get(n)
                if hit is not None and hit[0] is e.parsed and hit[1] == at:
                    out[n] = hit[2]
                    continue
                value = (
                    e.parsed if e.parsed.received_at == at else replace(e.parsed, received_at=at)
                )
                made[n] = (e.parsed, at, value)
                out[n] = value
        return out

    def records(self) -> list[ReportRecord]:
        """Every node's last report as the store would hold it after a flush, by node."""
        with self._lock:
            last, seen = dict(self._last), dict(self._seen)
        out = []
        for n in sorted(last):
            rec, at = last[n].record, seen[n]
            out.append(rec if rec.received_at == at else replace(rec, received_at=at))
        return out

    def absorb(self, records: Iterable[ReportRecord]) -> int:
        """Adopt stored reports newer than what memory holds (another writer, e.g. a
        replica on the same database); the full pass calls this. How many were newer."""
        with self._lock:
            known = dict(self._seen)
        # parsed outside the lock; re-checked under it (a report may have come meanwhile)
        fresh = [_entry(r) for r in records if r.received_at > known.get(r.node, float("-inf"))]
        newer = 0
        with self._lock:
            for entry in fresh:
                record = entry.record
                seen = self._seen.get(record.node)
                if seen is not None and record.received_at <= seen:
                    continue
                last = self._last.get(record.node)
                # a watched node's repeat counts too: it may have reached another replica
                if last is None or last.text != entry.text or record.node in self._watched:
                    self._news.add(record.node)
                self._last[record.node], self._seen[record.node] = entry, record.received_at
                newer += 1
        return newer

    def take_news(self) -> frozenset[str]:
        """Nodes whose report was news since the last call (and forget them)."""
        with self._lock:
            news, self._news = frozenset(self._news), set()
        return news

    def watch(self, nodes: frozenset[str], since: float) -> bool:
        """Nodes whose next report is news even when it repeats (replaces the last set).

        True when one of them already reported after ``since`` (the pass's snapshot):
        that report is news the pass did not see, so the caller plans again.
        """
        with self._lock:
            self._watched = nodes  # from here on a report of theirs is news in ``submit``
            seen = dict(self._seen)
        late = {n for n in nodes if seen.get(n, since) > since}
        if late:
            with self._lock:
                self._news |= late
        return bool(late)


def _entry(record: ReportRecord) -> _Last:
    return _Last(
        record,
        canonical_json(record.report),
        NodeReport.from_json(record.node, record.report, record.received_at),
    )
