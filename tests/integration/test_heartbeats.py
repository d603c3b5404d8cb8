"""Heartbeats at scale: repeats stay in memory, changes are durable, writes are grouped.

Real SQLite files read through a second connection (what is on disk, not what the
process believes), the real API over a socket, a real ``fleetkeeper serve`` killed with
SIGKILL, and the real loop on a real fleet repo.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler.reportbook import FLUSH_SECONDS, ReportBook
from reconciler.store import open_store
from reconciler.store.base import ReportRecord
from reconciler.views.fleet_status import rfc3339
from tests.helpers.fleet import LoopRig, fleet_files, nodes_named, release_doc, report_doc
from tests.helpers.server import api_harness, restart, start_server


def report(node: str, phase: str = "Healthy", version: str = "1.0.0") -> dict[str, Any]:
    w = {"name": "app", "version": version, "phase": phase, "healthy": phase == "Healthy"}
    return report_doc(node, [w])


def row(db: Path, node: str) -> tuple[str, float] | None:
    """The node's report row as the file on disk holds it (a separate connection)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        got = con.execute("SELECT report, received_at FROM reports WHERE node = ?", (node,))
        found = got.fetchone()
        return (str(found[0]), float(found[1])) if found else None
    finally:
        con.close()


def test_a_repeated_report_moves_last_seen_in_memory_and_writes_nothing(tmp_path: Path) -> None:
    with api_harness(tmp_path) as h:
        db = tmp_path / "api-state.db"
        token = h.register("gpu-1")
        with h.client(token) as c:
            assert c.post("/v1/nodes/gpu-1/status", json=report("gpu-1")).status_code == 200
            first = row(db, "gpu-1")
            wakes = len(h.wakes)
            time.sleep(0.05)
            assert c.post("/v1/nodes/gpu-1/status", json=report("gpu-1")).status_code == 200
        assert row(db, "gpu-1") == first  # no durable write for a repeat
        assert len(h.wakes) == wakes  # and no pass
        assert first is not None
        (mem,) = [r for r in h.ctx.reports.records() if r.node == "gpu-1"]
        assert mem.received_at > first[1]  # lastSeen moved in memory
        assert h.ctx.reports.flush() == 1  # the batched flush writes it
        after = row(db, "gpu-1")
        assert after is not None and after[1] == mem.received_at


def test_a_changed_report_is_on_disk_before_the_answer(tmp_path: Path) -> None:
    with api_harness(tmp_path) as h:
        db = tmp_path / "api-state.db"
        token = h.register("gpu-1")
        with h.client(token) as c:
            for phase in ("Restarting", "Healthy", "Failed"):
                wakes = len(h.wakes)
                r = c.post("/v1/nodes/gpu-1/status", json=report("gpu-1", phase))
                assert r.status_code == 200
                got = row(db, "gpu-1")
                assert got is not None and f'"phase":"{phase}"' in got[0]
                assert len(h.wakes) == wakes + 1  # news: the loop plans again


def test_reports_arriving_together_share_one_transaction(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        book = ReportBook(store, [], ttl=90)

        async def burst() -> list[bool]:
            recs = [ReportRecord(f"n{i}", report(f"n{i}"), 100.0 + i) for i in range(50)]
            return await asyncio.gather(*(book.submit(r) for r in recs))

        assert asyncio.run(burst()) == [True] * 50
        assert book.commits <= 2  # 50 reports, not 50 fsyncs
        assert {r.node for r in store.reports()} == {f"n{i}" for i in range(50)}
        assert book.take_news() == {f"n{i}" for i in range(50)}
        assert book.take_news() == frozenset()
    finally:
        store.close()


def test_a_failed_write_acknowledges_nothing(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    book = ReportBook(store, [], ttl=90)
    store.close()  # every write now fails

    async def one() -> None:
        await book.submit(ReportRecord("n1", report("n1"), 100.0))

    try:
        asyncio.run(one())
    except sqlite3.ProgrammingError as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("a report that was not stored was acknowledged")
    assert book.records() == []  # and memory did not pretend otherwise


def test_a_report_the_store_cannot_take_answers_the_applications_500(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The status fast path runs in front of the application (fastpath.py), so it answers
    a failure as the application's handlers would: JSON 500, logged, the connection kept."""
    with api_harness(tmp_path) as h:
        token = h.register("gpu-1")
        with h.client(token) as c:
            assert c.post("/v1/nodes/gpu-1/status", json=report("gpu-1")).status_code == 200
            h.ctx.store.close()  # every write now fails
            with caplog.at_level(logging.ERROR, logger="reconciler.api.errors"):
                r = c.post("/v1/nodes/gpu-1/status", json=report("gpu-1", "Failed"))
            assert r.status_code == 500, r.text
            assert r.json()["error"] == "internal" and "logged" in r.json()["message"]
            assert "internal error on POST /v1/nodes/gpu-1/status" in caplog.text
            assert "closed" in caplog.text  # the cause, in the log only
            # the same connection still answers: the repeat of the stored report
            assert c.post("/v1/nodes/gpu-1/status", json=report("gpu-1")).status_code == 200


def test_sigkill_keeps_changed_reports_and_flushed_last_seen(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        token = server.register("node-a")
        with server.client(token) as c:
            assert c.post("/v1/nodes/node-a/status", json=report("node-a")).status_code == 200
            time.sleep(1.2)  # the repeat's lastSeen falls in another second
            repeat_at = time.time()
            assert c.post("/v1/nodes/node-a/status", json=report("node-a")).status_code == 200
            changed = report("node-b", "Failed")
        token_b = server.register("node-b")
        with server.client(token_b) as c:
            assert c.post("/v1/nodes/node-b/status", json=changed).status_code == 200
        time.sleep(FLUSH_SECONDS + 1.5)  # one lastSeen flush has run
        server = restart(server, crash=True)  # SIGKILL: no clean shutdown, no final flush
        rows = {n["node"]: n for n in server.fleet()["nodes"]}
        assert rows["node-b"]["workloads"][0]["phase"] == "Failed"  # the change survived
        assert rows["node-a"]["lastSeen"] == rfc3339(repeat_at)  # the flushed lastSeen too
    finally:
        code = server.stop()
    assert code == 0, server.logs()


def test_stale_detection_reads_last_seen_from_memory(tmp_path: Path) -> None:
    """A node whose repeats never reached the store (no flush yet) is not Stale."""
    from reconciler.loop.reconciler import Reconciler
    from reconciler.source import GitSource

    files = fleet_files(nodes_named("n1", "n2"), [release_doc("app", "1.0.0", soak=0)])
    rig = LoopRig.create(tmp_path, files)
    try:
        cfg = rig.config()
        book = ReportBook(rig.store, [], ttl=rig.ttl)
        source = GitSource(cfg.repo, cfg.state_dir, cfg.branch)
        loop = Reconciler(cfg, rig.store, source, rig.notified.append, rig.clock, reports=book)
        t0 = rig.clock.t
        assert loop.reconcile_once().error is None

        async def send(node: str, at: float) -> None:
            await book.submit(ReportRecord(node, report(node), at))

        for n in ("n1", "n2"):
            asyncio.run(send(n, t0))
        asyncio.run(send("n1", t0 + 80))  # a repeat: memory only
        rig.clock.t = t0 + 100
        assert loop.reconcile_once().error is None
        stored = {r.node: r.received_at for r in rig.store.reports()}
        assert stored == {"n1": t0, "n2": t0}  # the store has not seen the repeat
        health = {n["node"]: n["health"] for n in loop.fleet_status()["nodes"]}
        assert health == {"n1": "Healthy", "n2": "Stale"}
        assert [e.node for e in rig.store.audit(limit=1000) if e.kind == "stale"] == ["n2"]
    finally:
        rig.close()


def test_snapshot_rebuilds_only_what_moved_and_equals_one_built_afresh(tmp_path: Path) -> None:
    """The planner's view after repeats, changes and quiet nodes is what a new book over
    the same reports gives; a node where nothing moved keeps its value (not rebuilt)."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        t0 = 1_000.0
        store.put_reports([ReportRecord(n, report(n), t0) for n in ("a", "b", "c")])
        book = ReportBook(store, store.reports(), ttl=90)
        first = book.snapshot()
        assert {n: r.received_at for n, r in first.items()} == {"a": t0, "b": t0, "c": t0}

        async def send(node: str, doc: dict[str, Any], at: float) -> None:
            await book.submit(ReportRecord(node, doc, at))

        asyncio.run(send("a", report("a"), t0 + 15))  # a repeat: lastSeen only
        asyncio.run(send("b", report("b", phase="Unhealthy"), t0 + 16))  # a change
        second = book.snapshot()
        assert second["c"] is first["c"]  # nothing moved: the same value
        assert second["a"].received_at == t0 + 15 and second["a"] != first["a"]
        assert second["b"].received_at == t0 + 16 and second["b"] != first["b"]
        again = book.snapshot()
        assert again == second
        assert again["a"] is second["a"]  # moved once, built once: not again per pass
        asyncio.run(send("a", report("a"), t0 + 30))
        third = book.snapshot()
        assert third["a"].received_at == t0 + 30
        assert third["b"] is second["b"] and third["c"] is first["c"]
        book.flush()
        assert third == ReportBook(store, store.reports(), ttl=90).snapshot()
    finally:
        store.close()


def test_publish_wakes_only_the_changed_nodes_pollers(tmp_path: Path) -> None:
    from reconciler.api.hub import DesiredHub
    from tests.helpers.server import desired_doc

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        hub = DesiredHub(store)

        async def scenario() -> tuple[set[str], set[str]]:
            hub.bind(asyncio.get_running_loop())
            nodes = [f"n{i}" for i in range(200)]
            waits = {n: asyncio.create_task(hub.wait_change(n, hub.etag(n), 30)) for n in nodes}
            await asyncio.sleep(0.05)  # every poller is waiting
            stored = store.put_desired_many({n: desired_doc(n) for n in ("n3", "n150")})
            hub.publish_from_thread([rec for rec, _ in stored])  # one batch, as the loop does
            await asyncio.sleep(0.05)
            done = {n for n, t in waits.items() if t.done()}
            versions = {n for n in done if b"1.0.0" in waits[n].result().body}
            hub.close()  # release the others
            await asyncio.gather(*waits.values())
            return done, versions

        done, versions = asyncio.run(scenario())
        assert done == {"n3", "n150"} and versions == done
    finally:
        store.close()


def test_long_polls_begun_together_do_not_expire_together(tmp_path: Path) -> None:
    """300 waits of 4 s begun in the same instant (a fleet started at once): the expiry
    wheel spreads them over the latest half of the wait, each 0.1 s slot taking its
    share, where cutting each by up to 10 % alone ended all of them within 0.4 s; a
    lone wait still lasts what it asked, less at most 10 %."""
    from reconciler.api.hub import MIN_PER_SLOT, SLOT_SECONDS, DesiredHub

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        hub = DesiredHub(store)

        async def scenario() -> tuple[list[float], float]:
            loop = asyncio.get_running_loop()
            hub.bind(loop)
            t0 = loop.time()

            async def poll(node: str, wait: float) -> float:
                entry = await hub.wait_change(node, hub.etag(node), wait)
                assert entry.etag == hub.etag(node)  # expired: the same document (a 304)
                return loop.time() - t0

            lone = asyncio.create_task(poll("lone", 6))
            herd = await asyncio.gather(*(poll(f"n{i}", 4) for i in range(300)))
            return herd, await lone

        herd, lone = asyncio.run(scenario())
        assert min(herd) >= 2.0 - 0.01 and max(herd) <= 4.0 + 0.15, (min(herd), max(herd))
        early = sum(t < 3.6 for t in herd)
        assert early >= 150, f"only {early} of 300 waits ended before 3.6 s"
        per_slot = Counter(int(t / SLOT_SECONDS) for t in herd)
        room = max(MIN_PER_SLOT, math.ceil(300 * SLOT_SECONDS / 2))  # 300 over 2 s
        # a slot's waiters end together; timer lateness may merge two neighbours
        assert max(per_slot.values()) <= 2 * room, per_slot.most_common(3)
        # a wait ends at the start of its slot: up to SLOT_SECONDS before the cut time
        assert 5.4 - SLOT_SECONDS - 0.01 <= lone <= 6.0 + 0.15, lone
    finally:
        store.close()


def test_served_loop_plans_incrementally_and_a_quiet_pass_writes_nothing(tmp_path: Path) -> None:
    from reconciler.loop.reconciler import Reconciler
    from reconciler.source import GitSource

    nodes = ("n1", "n2", "n3", "n4")
    files = fleet_files(nodes_named(*nodes), [release_doc("app", "1.0.0", batch_size=2, soak=0)])
    rig = LoopRig.create(tmp_path, files)
    try:
        cfg = rig.config()
        book = ReportBook(rig.store, [], ttl=rig.ttl)
        source = GitSource(cfg.repo, cfg.state_dir, cfg.branch)
        loop = Reconciler(cfg, rig.store, source, rig.notified.append, rig.clock, reports=book)
        assert loop.reconcile_once().error is None  # first pass: full, batch 1 given
        assert loop.working.full_passes == 1

        async def converge(*names: str) -> None:
            for n in names:
                rec = rig.store.desired(n)
                w = [{"name": "app", "version": "1.0.0", "phase": "Healthy", "healthy": True}]
                doc = report_doc(n, w if rec and rec.document["workloads"] else [])
                await book.submit(ReportRecord(n, doc, rig.clock.t))

        rig.clock.t += 1
        asyncio.run(converge(*nodes))
        result = loop.reconcile_once()  # the reports are news: incremental, batch 2 given
        assert result.error is None and loop.working.incremental_passes == 1
        assert sorted(result.changed_nodes) == ["n3", "n4"]
        rig.clock.t += 1
        asyncio.run(converge("n3", "n4"))
        assert loop.reconcile_once().error is None
        assert rig.phase("app") == "Succeeded"
        before = rig.snapshot()
        rig.clock.t += 1
        quiet = loop.reconcile_once()  # nothing new: nothing written
        assert quiet.writes == 0 and rig.snapshot() == before
        assert loop.working.full_passes == 1  # never re-planned everything
    finally:
        rig.close()


def test_a_full_pass_adopts_newer_reports_from_the_store(tmp_path: Path) -> None:
    """The store stays the truth: a report written by another writer is seen at resync."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        book = ReportBook(store, [ReportRecord("n1", report("n1"), 100.0)], ttl=90)
        store.put_report(ReportRecord("n1", report("n1", "Failed"), 200.0))  # elsewhere
        store.put_report(ReportRecord("n2", report("n2"), 50.0))
        assert book.absorb(store.reports()) == 2
        got = {r.node: (r.received_at, r.report["workloads"][0]["phase"]) for r in book.records()}
        assert got == {"n1": (200.0, "Failed"), "n2": (50.0, "Healthy")}
        assert book.take_news() == {"n1", "n2"}
        assert book.absorb(store.reports()) == 0  # nothing newer the second time
    finally:
        store.close()


def test_a_signed_fan_out_serves_the_first_nodes_while_the_rest_are_signed(
    tmp_path: Path,
) -> None:
    """Entries reach the event loop chunk by chunk: a poller of the first chunk holds its
    signed document before the publishing thread has signed the last node's (on the old
    code every entry was signed before any was installed, and this waited in vain)."""
    import threading

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fleetkeeper_common import signing
    from reconciler.api.hub import PUBLISH_CHUNK, DesiredHub
    from reconciler.signing import DocumentSigner, Signed
    from tests.helpers.server import desired_doc

    key = Ed25519PrivateKey.generate()
    first_served = threading.Event()
    last = f"n{2 * PUBLISH_CHUNK + 9:04d}"
    signed_after: list[bool] = []

    class Recording(DocumentSigner):
        def sign_many(self, documents: Sequence[Mapping[str, object]], now: float) -> list[Signed]:
            # the fan-out's last chunk (not the empty documents its pollers start on)
            if any(d.get("node") == last and d.get("workloads") for d in documents):
                # give the loop up to 5 s to serve the first chunk before this is signed
                signed_after.append(first_served.wait(5))
            return super().sign_many(documents, now)

    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        hub = DesiredHub(store, (), Recording(key, 3600))
        nodes = [f"n{i:04d}" for i in range(2 * PUBLISH_CHUNK + 10)]
        stored = [rec for rec, _ in store.put_desired_many({n: desired_doc(n) for n in nodes})]

        async def scenario() -> dict[str, bytes]:
            hub.bind(asyncio.get_running_loop())
            # each poller holds its (signed) empty document and waits for a change
            waits = {n: asyncio.create_task(hub.wait_change(n, hub.get(n).etag, 30)) for n in nodes}
            await asyncio.sleep(0.05)
            assert not any(t.done() for t in waits.values())
            publisher = threading.Thread(target=hub.publish_from_thread, args=(stored,))
            publisher.start()
            entry = await waits[nodes[0]]
            assert entry.signed is not None and entry.document and entry.document["workloads"]
            first_served.set()
            await asyncio.to_thread(publisher.join)
            got = {n: (await t).signed for n, t in waits.items()}
            return {n: s.body for n, s in got.items() if s is not None}

        bodies = asyncio.run(scenario())
        assert signed_after == [True]
        assert sorted(bodies) == nodes  # every poller woken with its own signed document
        trusted = {signing.keyid(key.public_key()): key.public_key()}
        for n in (nodes[0], last):
            envelope = signing.parse_envelope(json.loads(bodies[n]))
            assert signing.verify(envelope, trusted) and envelope.signed["node"] == n
    finally:
        store.close()
