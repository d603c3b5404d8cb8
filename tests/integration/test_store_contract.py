"""Contract suite for every Store backend: the same tests run against each of BACKENDS.

A new backend adds an opener to BACKENDS; nothing else changes. PostgreSQL runs on the
suite's throwaway server (``tests/helpers/postgres.py``), a fresh database per test.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.errors import ConfigError
from reconciler.plan.controls import Control
from reconciler.store import Store, open_store
from reconciler.store.base import (
    AppliedRevision,
    AuditEvent,
    JoinToken,
    NodeClaim,
    NodeRecord,
    ReportRecord,
)
from reconciler.store.migrations import LATEST
from tests.helpers.server import desired_doc

Opener = Callable[[], Store]


def _sqlite(request: pytest.FixtureRequest, tmp: Path) -> Opener:
    url = f"sqlite:///{tmp / 'state' / 'state.db'}"
    return lambda: open_store(url)


def _postgresql(request: pytest.FixtureRequest, tmp: Path) -> Opener:
    url = str(request.getfixturevalue("postgres_url"))
    return lambda: open_store(url)


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Opener]] = {
    "sqlite": _sqlite,
    "postgresql": _postgresql,
}


@pytest.fixture(params=sorted(BACKENDS))
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    return BACKENDS[request.param](request, tmp_path)


@pytest.fixture
def store(opener: Opener) -> Iterator[Store]:
    s = opener()
    yield s
    s.close()


def test_fresh_store_is_empty_and_migrated(store: Store) -> None:
    assert store.schema_version() == LATEST
    store.ping()
    assert store.applied_revision() is None
    assert list(store.audit()) == []
    assert list(store.nodes()) == []
    assert store.desired("x") is None
    assert list(store.all_desired()) == []
    assert list(store.reports()) == []
    assert dict(store.rollouts()) == {}
    assert store.get_meta("k") is None
    assert list(store.join_tokens()) == []


def test_applied_revision_latest_wins(store: Store) -> None:
    store.set_applied_revision(AppliedRevision("a" * 40, {"kind": "merge"}, 1.0))
    store.set_applied_revision(AppliedRevision("b" * 40, {"kind": "tag", "ref": "deploy/1"}, 2.0))
    rev = store.applied_revision()
    assert rev == AppliedRevision("b" * 40, {"kind": "tag", "ref": "deploy/1"}, 2.0)


def test_audit_appends_in_order_with_since_and_limit(store: Store) -> None:
    ids = [
        store.append_audit(AuditEvent(time=float(t), kind="applied", message=f"m{t}", node="n"))
        for t in range(5)
    ]
    assert ids == sorted(ids) and len(set(ids)) == 5
    events = store.audit()
    assert [e.message for e in events] == ["m0", "m1", "m2", "m3", "m4"]
    assert [e.id for e in events] == ids
    assert [e.message for e in store.audit(since=3.0)] == ["m3", "m4"]
    assert [e.message for e in store.audit(limit=2)] == ["m0", "m1"]
    e = store.audit(since=4.0)[0]
    assert (e.kind, e.node, e.revision, dict(e.details)) == ("applied", "n", None, {})


def test_nodes_upsert_rotates_token_and_facts(store: Store) -> None:
    store.upsert_node(NodeRecord("gpu-1", {"platform": "linux/amd64"}, "h1", 1.0))
    store.upsert_node(NodeRecord("cpu-1", {"platform": "linux/arm64"}, "h2", 2.0))
    store.upsert_node(NodeRecord("gpu-1", {"platform": "linux/amd64", "roles": ["x"]}, "h3", 3.0))
    got = store.node("gpu-1")
    assert got == NodeRecord("gpu-1", {"platform": "linux/amd64", "roles": ["x"]}, "h3", 3.0)
    assert [n.name for n in store.nodes()] == ["cpu-1", "gpu-1"]
    assert store.node("nope") is None


def test_put_desired_bumps_generation_only_on_change(store: Store) -> None:
    rec1, changed1 = store.put_desired("n1", desired_doc("n1"))
    assert changed1 and rec1.generation == 1 and rec1.document["generation"] == 1
    rec2, changed2 = store.put_desired("n1", desired_doc("n1"))
    assert not changed2 and rec2 == rec1
    rec3, changed3 = store.put_desired("n1", desired_doc("n1", version="1.1.0"))
    assert changed3 and rec3.generation == 2 and rec3.etag != rec1.etag
    assert rec3.etag.startswith('"') and rec3.etag.endswith('"')
    rec4, changed4 = store.put_desired("n1", desired_doc("n1", version="1.1.0", revision="c" * 40))
    assert changed4 and rec4.generation == 3
    assert store.desired("n1") == rec4
    store.put_desired("n0", desired_doc("n0"))
    assert [d.node for d in store.all_desired()] == ["n0", "n1"]


def test_reports_keep_last_per_node(store: Store) -> None:
    store.put_report(ReportRecord("n1", {"generation": 1, "workloads": []}, 10.0))
    store.put_report(ReportRecord("n1", {"generation": 2, "workloads": []}, 11.0))
    store.put_report(ReportRecord("n2", {"generation": 1, "workloads": []}, 12.0))
    reps = {r.node: r for r in store.reports()}
    assert reps["n1"] == ReportRecord("n1", {"generation": 2, "workloads": []}, 11.0)
    assert set(reps) == {"n1", "n2"}


def test_rollouts_and_meta(store: Store) -> None:
    store.put_rollout("agent", {"phase": "Progressing", "batch": 1})
    store.put_rollout("agent", {"phase": "Soaking", "batch": 1})
    store.put_rollout("model", {"phase": "Pending"})
    assert dict(store.rollouts()) == {
        "agent": {"phase": "Soaking", "batch": 1},
        "model": {"phase": "Pending"},
    }
    store.set_meta("refused-tip", "abc")
    store.set_meta("refused-tip", "def")
    assert store.get_meta("refused-tip") == "def"


def test_rollout_controls_are_stored_in_order_with_their_audit_event(store: Store) -> None:
    def control(action: Any, node: str | None = None) -> Control:
        return Control(0, "agent", action, "fp1", "alice", f"why {action}", 5.0, node)

    def audit(kind: str) -> AuditEvent:
        return AuditEvent(time=5.0, kind=kind, message=kind, release="agent", details={"a": 1})

    first = store.add_control(control("pause"), audit("rollout-pause"))
    second = store.add_control(control("skip-node", "n2"), audit("rollout-skip-node"))
    assert second > first
    got = list(store.controls())
    assert got == [
        Control(first, "agent", "pause", "fp1", "alice", "why pause", 5.0, None),
        Control(second, "agent", "skip-node", "fp1", "alice", "why skip-node", 5.0, "n2"),
    ]
    assert list(store.controls(after=first)) == got[1:]
    assert list(store.controls(after=second)) == []
    events = [e for e in store.audit() if e.kind.startswith("rollout-")]
    assert [(e.kind, e.details) for e in events] == [
        ("rollout-pause", {"a": 1, "seq": first}),
        ("rollout-skip-node", {"a": 1, "seq": second}),
    ]


def test_observe_records_the_first_time_only(store: Store) -> None:
    a, b = "a" * 40, "b" * 40
    assert dict(store.observe([], 1.0)) == {}
    assert dict(store.observe([a], 100.0)) == {a: 100.0}
    # seen again later (and a new one): the first time stays, the new one gets ``now``
    assert dict(store.observe([b, a, a], 500.0)) == {a: 100.0, b: 500.0}
    assert dict(store.observe([a, b], 900.0)) == {a: 100.0, b: 500.0}


def test_reopen_after_close_keeps_everything(opener: Opener) -> None:
    s = opener()
    s.set_applied_revision(AppliedRevision("a" * 40, {"kind": "merge"}, 1.0))
    s.append_audit(AuditEvent(time=1.0, kind="applied", message="applied a", revision="a" * 40))
    s.upsert_node(NodeRecord("n1", {"platform": "linux/amd64"}, "hash", 1.0))
    rec, _ = s.put_desired("n1", desired_doc("n1"))
    s.put_report(ReportRecord("n1", {"generation": 1}, 5.0))
    s.put_rollout("agent", {"phase": "Succeeded"})
    s.set_meta("k", "v")
    s.observe(["c" * 40], 7.0)
    s.close()
    s2 = opener()
    try:
        assert s2.schema_version() == LATEST
        assert s2.applied_revision() == AppliedRevision("a" * 40, {"kind": "merge"}, 1.0)
        assert [e.message for e in s2.audit()] == ["applied a"]
        assert s2.node("n1") == NodeRecord("n1", {"platform": "linux/amd64"}, "hash", 1.0)
        assert s2.desired("n1") == rec
        same = s2.put_desired("n1", desired_doc("n1"))[1] is False
        assert same  # the same content: no new generation
        assert [r.received_at for r in s2.reports()] == [5.0]
        assert dict(s2.rollouts()) == {"agent": {"phase": "Succeeded"}}
        assert s2.get_meta("k") == "v"
        assert dict(s2.observe(["c" * 40], 99.0)) == {"c" * 40: 7.0}
    finally:
        s2.close()


def test_concurrent_writers_from_threads(store: Store) -> None:
    def work(i: int) -> None:
        for j in range(20):
            store.put_report(ReportRecord(f"n{i}", {"generation": j}, float(j)))
            store.append_audit(AuditEvent(time=float(j), kind="report", message=f"{i}-{j}"))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.audit(limit=1000)) == 80
    assert {r.node: r.report["generation"] for r in store.reports()} == {
        f"n{i}": 19 for i in range(4)
    }


def test_closed_store_refuses_calls(opener: Opener) -> None:
    s = opener()
    s.close()
    s.close()  # closing twice is harmless
    with pytest.raises(Exception, match="closed"):  # each backend raises its driver's error
        s.ping()


def _token(tid: str, **kw: object) -> JoinToken:
    fields: dict[str, object] = {
        "id": tid,
        "token_hash": f"hash-{tid}",
        "created_at": 1.0,
        "expires_at": 100.0,
        "uses": 1,
    }
    fields.update(kw)
    return JoinToken(**fields)  # type: ignore[arg-type]


def test_join_tokens_round_trip_and_revoke(store: Store) -> None:
    scoped = _token("t2", roles=("inference",), labels={"site": "lab"}, uses=3, created_at=2.0)
    store.create_join_token(_token("t1", node="gpu-1"))
    store.create_join_token(scoped)
    assert list(store.join_tokens()) == [_token("t1", node="gpu-1"), scoped]
    assert store.join_token_by_hash("hash-t2") == scoped
    assert store.join_token_by_hash("hash-nope") is None
    revoked = store.revoke_join_token("t1", 5.0)
    assert revoked is not None and revoked.revoked_at == 5.0 and revoked.state(6.0) == "revoked"
    again = store.revoke_join_token("t1", 9.0)  # revoking twice keeps the first time
    assert again is not None and again.revoked_at == 5.0
    assert store.revoke_join_token("nope", 5.0) is None
    assert scoped.state(50.0) == "active" and scoped.state(100.0) == "expired"


def test_claim_node_consumes_uses_and_refuses_a_taken_name(store: Store) -> None:
    store.create_join_token(_token("t1", uses=2))
    admission = {"via": "join-token", "tokenId": "t1"}
    first = NodeRecord("gpu-1", {"platform": "linux/amd64"}, "h1", 10.0, admission)
    assert store.claim_node(first, replaces=None, join_token="t1") is None
    assert store.node("gpu-1") == first
    # the name is taken: refused, the token keeps its remaining use, the node its credential
    impostor = NodeRecord("gpu-1", {"platform": "linux/amd64"}, "evil", 11.0)
    assert store.claim_node(impostor, replaces=None, join_token="t1") == "taken"
    assert store.node("gpu-1") == first
    assert store.join_token_by_hash("hash-t1").used == 1  # type: ignore[union-attr]
    # the holder of the current credential may rotate it
    rotated = NodeRecord("gpu-1", {"platform": "linux/amd64"}, "h2", 12.0)
    assert store.claim_node(rotated, replaces="h1", join_token=None) is None
    assert store.claim_node(impostor, replaces="h1", join_token=None) == "taken"
    assert store.node("gpu-1") == rotated
    second = NodeRecord("gpu-2", {}, "h3", 13.0)
    assert store.claim_node(second, replaces=None, join_token="t1") is None
    third = NodeRecord("gpu-3", {}, "h4", 14.0)
    assert store.claim_node(third, replaces=None, join_token="t1") == "token-spent"  # used up
    assert store.node("gpu-3") is None
    assert store.delete_node("gpu-1") and not store.delete_node("gpu-1")
    assert store.node("gpu-1") is None


def test_claim_node_refuses_an_expired_or_revoked_token(store: Store) -> None:
    store.create_join_token(_token("old", expires_at=20.0))
    store.create_join_token(_token("gone"))
    store.revoke_join_token("gone", 2.0)
    late = NodeRecord("n1", {}, "h", 20.0)
    assert store.claim_node(late, replaces=None, join_token="old") == "token-spent"
    assert store.claim_node(late, replaces=None, join_token="gone") == "token-spent"
    assert store.claim_node(late, replaces=None, join_token="unknown") == "token-spent"
    assert store.node("n1") is None


def test_claim_node_is_atomic_under_concurrent_claims(opener: Opener) -> None:
    store = opener()
    store.create_join_token(_token("t1", uses=100))
    results: list[object] = []

    def claim(i: int) -> None:
        rec = NodeRecord("gpu-1", {}, f"h{i}", 10.0)
        results.append(store.claim_node(rec, replaces=None, join_token="t1"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(None) == 1 and results.count("taken") == 7
    assert store.join_token_by_hash("hash-t1").used == 1  # type: ignore[union-attr]
    store.close()


def test_claim_nodes_judges_in_order_in_one_transaction_with_the_audit(store: Store) -> None:
    store.create_join_token(_token("t1", uses=2))

    def claim(name: str, token_hash: str, replaces: str | None = None) -> NodeClaim:
        event = AuditEvent(time=10.0, kind="registered", node=name, message=f"{name} {token_hash}")
        record = NodeRecord(name, {}, token_hash, 10.0, {"via": "join-token"})
        return NodeClaim(record, replaces, "t1" if replaces is None else None, event)

    batch = [
        claim("gpu-1", "h1"),
        claim("gpu-1", "evil"),  # sees the claim before it in the same batch: taken
        claim("gpu-2", "h2"),
        claim("gpu-3", "h3"),  # the token had two uses: spent
        claim("gpu-1", "h1b", replaces="h1"),  # rotation by the holder, same batch
    ]
    assert store.claim_nodes(batch) == [None, "taken", None, "token-spent", None]
    assert store.node("gpu-1").token_hash == "h1b"  # type: ignore[union-attr]
    assert store.node("gpu-2").token_hash == "h2"  # type: ignore[union-attr]
    assert store.node("gpu-3") is None
    assert store.join_token_by_hash("hash-t1").used == 2  # type: ignore[union-attr]
    # exactly the stored claims' events, in order; nothing for the refused ones
    assert [e.message for e in store.audit()] == ["gpu-1 h1", "gpu-2 h2", "gpu-1 h1b"]
    assert store.claim_nodes([]) == []


def test_claim_nodes_is_all_or_nothing_when_the_transaction_fails(store: Store) -> None:
    store.create_join_token(_token("t1", uses=5))
    good = NodeRecord("gpu-1", {}, "h1", 10.0)
    event = AuditEvent(time=10.0, kind="registered", node="gpu-1", message="ok")
    # a value the store cannot encode fails the transaction after the first claim wrote
    bad = NodeRecord("gpu-2", {"x": object()}, "h2", 10.0)  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        store.claim_nodes([NodeClaim(good, None, "t1", event), NodeClaim(bad, None, "t1", event)])
    assert store.node("gpu-1") is None and store.audit() == []
    assert store.join_token_by_hash("hash-t1").used == 0  # type: ignore[union-attr]


# SQLite specifics: the file, its journal mode and the migration bookkeeping.


def test_sqlite_is_wal_full_and_audit_append_only(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    s = open_store(f"sqlite:///{path}")
    s.append_audit(AuditEvent(time=1.0, kind="applied", message="m"))
    s.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        assert versions == list(range(1, LATEST + 1))
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET message = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit")
        db.execute(
            "INSERT INTO rollout_controls (name, action, fingerprint, actor, reason, at) "
            "VALUES ('a', 'pause', 'f', 'x', 'y', 1.0)"
        )
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE rollout_controls SET reason = 'rewritten'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM rollout_controls")
        db.execute("INSERT INTO observed_objects VALUES ('x', 1.0)")
        with pytest.raises(sqlite3.DatabaseError, match="never rewritten"):
            db.execute("UPDATE observed_objects SET first_seen = 0")
    finally:
        db.close()


def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    open_store(f"sqlite:///{path}").close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (?, 0)", (LATEST + 1,))
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="newer than this fleetkeeper"):
        open_store(f"sqlite:///{path}")


def test_sqlite_migrations_run_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    for _ in range(3):
        open_store(f"sqlite:///{path}").close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == LATEST
    finally:
        db.close()


def test_sqlite_state_is_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.db"
    old = os.umask(0o022)
    try:
        s = open_store(f"sqlite:///{path}")
        s.append_audit(AuditEvent(time=1.0, kind="applied", message="m"))
        s.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for extra in path.parent.glob("state.db-*"):  # -wal / -shm take the file's mode
        assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra


def test_sqlite_tightens_a_database_left_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.db"
    open_store(f"sqlite:///{path}").close()
    path.chmod(0o644)
    path.parent.chmod(0o755)
    open_store(f"sqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_atomic_commits_a_pass_whole_or_not_at_all(store: Store) -> None:
    # a reconcile pass: rollout state, a document, its audit event, the applied revision
    with pytest.raises(RuntimeError), store.atomic():
        store.put_rollout("agent", {"phase": "Progressing", "batch": 2})
        store.put_desired_many({"gpu-1": {"workloads": []}})
        store.append_audit(AuditEvent(time=1.0, kind="batch-started", message="batch 2"))
        raise RuntimeError("killed between two writes")
    assert store.rollouts() == {} and store.desired("gpu-1") is None
    assert list(store.audit()) == []

    with store.atomic():
        store.put_rollout("agent", {"phase": "Progressing", "batch": 2})
        store.put_desired_many({"gpu-1": {"workloads": []}})
        with store.atomic():  # nested: part of the same transaction
            store.append_audit(AuditEvent(time=1.0, kind="batch-started", message="batch 2"))
        assert store.get_meta("missing") is None  # reads inside the block work
    assert store.rollouts() == {"agent": {"phase": "Progressing", "batch": 2}}
    desired = store.desired("gpu-1")
    assert desired is not None and desired.generation == 1
    assert [e.kind for e in store.audit()] == ["batch-started"]
