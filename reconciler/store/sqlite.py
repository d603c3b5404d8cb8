"""SQLite backend of the store: one file, WAL mode, versioned migrations.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so every commit
fsyncs the write-ahead log before the method returns. A crash of the process *or* of
the machine after a method returned loses nothing (``NORMAL`` would survive a process
crash but could drop the last commits on power loss, which breaks the promise that an
acknowledged report or token is kept). Each method is one transaction.

Threads: one writing connection shared behind a lock; the API calls in from worker
threads and the reconcile loop from its own thread. Reads go through a second connection
behind its own lock: in WAL mode a reader sees every committed transaction and never
waits for a writer, so a registration's or the dashboard's reads do not queue behind
another transaction's fsync (``:memory:`` has one connection for both).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import reconciler.store.records as records
from reconciler.errors import ConfigError
from reconciler.plan.controls import Control
from reconciler.spec import JSON
from reconciler.store.base import (
    AppliedRevision,
    AuditEvent,
    ClaimRefusal,
    DesiredRecord,
    JoinToken,
    NodeClaim,
    NodeRecord,
    ReportRecord,
)
from reconciler.store.files import private_file
from reconciler.store.migrations import LATEST, MIGRATIONS

log = logging.getLogger(__name__)


_dumps = records.dumps
_loads = records.loads
_NODE_COLUMNS = records.NODE_COLUMNS
_TOKEN_COLUMNS = records.TOKEN_COLUMNS
_node = records.node_record
_join_token = records.join_token_record
_desired = records.desired_record


class _Unit(threading.local):
    active = False  # this thread is inside atomic()


class SqliteStore:
    """The Store protocol over one SQLite file (``:memory:`` for throwaway use)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:":
            private_file(Path(path))
        try:
            self._db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {path}: {exc}") from exc
        self._lock = threading.Lock()
        self._unit = _Unit()
        self._closed = False
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._reader, self._read_lock = self._db, self._lock
        self._migrate()
        if path != ":memory:":
            reader = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            reader.execute("PRAGMA query_only=ON")
            self._reader, self._read_lock = reader, threading.Lock()

    # plumbing

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        if self._unit.active:  # inside atomic() on this thread: its transaction is ours
            yield self._db
            return
        with self._lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the store is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self._unit.active:
            yield
            return
        with self._tx():
            self._unit.active = True
            try:
                yield
            finally:
                self._unit.active = False

    def _read(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if self._unit.active and self._reader is self._db:  # one connection: the lock is ours
            return list(self._db.execute(sql, params).fetchall())
        with self._read_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("the store is closed")
            return list(self._reader.execute(sql, params).fetchall())

    def _migrate(self) -> None:
        with self._tx() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
        current = self.schema_version()
        if current > LATEST:
            raise ConfigError(
                f"database {self.path} has schema version {current}, newer than this "
                f"fleetkeeper knows ({LATEST}); upgrade fleetkeeper or use another database"
            )
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            with self._tx() as db:
                for sql in statements:
                    db.execute(sql)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
            log.info("store: applied migration %d to %s", version, self.path)

    # protocol

    def close(self) -> None:
        separate = self._reader is not self._db
        with self._lock, self._read_lock if separate else nullcontext():
            if not self._closed:
                self._closed = True
                if separate:
                    self._reader.close()
                self._db.close()

    def ping(self) -> None:
        self._read("SELECT 1")

    def schema_version(self) -> int:
        rows = self._read("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    def applied_revision(self) -> AppliedRevision | None:
        rows = self._read(
            "SELECT sha, approval, applied_at FROM applied_revisions ORDER BY id DESC LIMIT 1"
        )
        if not rows:
            return None
        sha, approval, at = rows[0]
        return AppliedRevision(sha=sha, approval=_loads(approval), applied_at=at)

    def set_applied_revision(self, rev: AppliedRevision) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO applied_revisions (sha, approval, applied_at) VALUES (?, ?, ?)",
                (rev.sha, _dumps(rev.approval), rev.applied_at),
            )

    def append_audit(self, event: AuditEvent) -> int:
        with self._tx() as db:
            return _insert_audit(db, event)

    def audit(self, since: float | None = None, limit: int = 1000) -> Sequence[AuditEvent]:
        rows = self._read(
            "SELECT id, time, kind, message, revision, release, node, details FROM audit "
            "WHERE time >= ? ORDER BY id LIMIT ?",
            (since if since is not None else float("-inf"), max(0, limit)),
        )
        return [
            AuditEvent(
                id=r[0],
                time=r[1],
                kind=r[2],
                message=r[3],
                revision=r[4],
                release=r[5],
                node=r[6],
                details=_loads(r[7]),
            )
            for r in rows
        ]

    def upsert_node(self, node: NodeRecord) -> None:
        with self._tx() as db:
            _write_node(db, node)

    def node(self, name: str) -> NodeRecord | None:
        rows = self._read(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE name = ?", (name,))
        return _node(rows[0]) if rows else None

    def nodes(self) -> Sequence[NodeRecord]:
        rows = self._read(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")
        return [_node(r) for r in rows]

    def delete_node(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM nodes WHERE name = ?", (name,)).rowcount > 0

    def claim_node(
        self, node: NodeRecord, *, replaces: str | None, join_token: str | None
    ) -> ClaimRefusal | None:
        with self._tx() as db:
            return _claim(db, node, replaces, join_token)

    def claim_nodes(self, claims: Sequence[NodeClaim]) -> list[ClaimRefusal | None]:
        results: list[ClaimRefusal | None] = []
        with self._tx() as db:
            for c in claims:
                lost = _claim(db, c.node, c.replaces, c.join_token)
                if lost is None:
                    _insert_audit(db, c.audit)
                results.append(lost)
        return results

    def create_join_token(self, token: JoinToken) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO join_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                records.token_row(token),
            )

    def join_tokens(self) -> Sequence[JoinToken]:
        rows = self._read(f"SELECT {_TOKEN_COLUMNS} FROM join_tokens ORDER BY created_at, id")
        return [_join_token(r) for r in rows]

    def join_token_by_hash(self, token_hash: str) -> JoinToken | None:
        rows = self._read(
            f"SELECT {_TOKEN_COLUMNS} FROM join_tokens WHERE token_hash = ?", (token_hash,)
        )
        return _join_token(rows[0]) if rows else None

    def revoke_join_token(self, token_id: str, now: float) -> JoinToken | None:
        with self._tx() as db:
            db.execute(
                "UPDATE join_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            row = db.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM join_tokens WHERE id = ?", (token_id,)
            ).fetchone()
            return None if row is None else _join_token(row)

    def desired(self, node: str) -> DesiredRecord | None:
        rows = self._read(
            "SELECT node, generation, etag, document FROM desired WHERE node = ?", (node,)
        )
        return _desired(rows[0]) if rows else None

    def all_desired(self) -> Sequence[DesiredRecord]:
        rows = self._read("SELECT node, generation, etag, document FROM desired ORDER BY node")
        return [_desired(r) for r in rows]

    def put_desired(self, node: str, document: Mapping[str, JSON]) -> tuple[DesiredRecord, bool]:
        return self.put_desired_many({node: document})[0]

    def put_desired_many(
        self, documents: Mapping[str, Mapping[str, JSON]]
    ) -> list[tuple[DesiredRecord, bool]]:
        out: list[tuple[DesiredRecord, bool]] = []
        with self._tx() as db:
            for node, document in documents.items():
                out.append(_put_desired(db, node, document))
        return out

    def put_report(self, report: ReportRecord) -> None:
        self.put_reports([report])

    def put_reports(self, reports: Sequence[ReportRecord]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO reports (node, report, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT (node) DO UPDATE SET report = excluded.report, "
                "received_at = excluded.received_at",
                [(r.node, _dumps(r.report), r.received_at) for r in reports],
            )

    def touch_reports(self, seen: Mapping[str, float]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE reports SET received_at = MAX(received_at, ?) WHERE node = ?",
                [(at, node) for node, at in seen.items()],
            )

    def reports(self) -> Sequence[ReportRecord]:
        rows = self._read("SELECT node, report, received_at FROM reports ORDER BY node")
        return [ReportRecord(node=r[0], report=_loads(r[1]), received_at=r[2]) for r in rows]

    def rollouts(self) -> Mapping[str, Mapping[str, JSON]]:
        rows = self._read("SELECT name, state FROM rollouts ORDER BY name")
        return {r[0]: _loads(r[1]) for r in rows}

    def put_rollout(self, name: str, state: Mapping[str, JSON]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO rollouts (name, state) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET state = excluded.state",
                (name, _dumps(state)),
            )

    def add_control(self, control: Control, audit: AuditEvent) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO rollout_controls (name, action, fingerprint, node, actor, reason, "
                "at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    control.name,
                    control.action,
                    control.fingerprint,
                    control.node,
                    control.actor,
                    control.reason,
                    control.at,
                ),
            )
            seq = int(cast(int, cur.lastrowid))
            _insert_audit(db, replace(audit, details={**audit.details, "seq": seq}))
            return seq

    def controls(self, after: int = 0) -> Sequence[Control]:
        rows = self._read(
            "SELECT seq, name, action, fingerprint, node, actor, reason, at "
            "FROM rollout_controls WHERE seq > ? ORDER BY seq",
            (after,),
        )
        return [
            Control(
                seq=r[0],
                name=r[1],
                action=r[2],
                fingerprint=r[3],
                node=r[4],
                actor=r[5],
                reason=r[6],
                at=r[7],
            )
            for r in rows
        ]

    def observe(self, shas: Sequence[str], now: float) -> Mapping[str, float]:
        wanted = sorted(set(shas))
        if not wanted:
            return {}
        out: dict[str, float] = {}
        with self._tx() as db:
            for sha in wanted:
                db.execute(
                    "INSERT INTO observed_objects (sha, first_seen) VALUES (?, ?) "
                    "ON CONFLICT (sha) DO NOTHING",
                    (sha, now),
                )
                row = db.execute(
                    "SELECT first_seen FROM observed_objects WHERE sha = ?", (sha,)
                ).fetchone()
                out[sha] = float(row[0])
        return out

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


def _write_node(db: sqlite3.Connection, node: NodeRecord) -> None:
    db.execute(
        f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET facts = excluded.facts, "
        "token_hash = excluded.token_hash, registered_at = excluded.registered_at, "
        "admission = excluded.admission",
        records.node_row(node),
    )


def _claim(
    db: sqlite3.Connection, node: NodeRecord, replaces: str | None, join_token: str | None
) -> ClaimRefusal | None:
    """One claim inside the caller's transaction; nothing is written when it is refused."""
    row = db.execute("SELECT token_hash FROM nodes WHERE name = ?", (node.name,)).fetchone()
    current = None if row is None else str(row[0])
    if current != replaces:
        return "taken"
    if join_token is not None:
        spent = db.execute(
            "UPDATE join_tokens SET used = used + 1 WHERE id = ? AND revoked_at IS NULL "
            "AND expires_at > ? AND used < uses",
            (join_token, node.registered_at),
        )
        if spent.rowcount != 1:
            return "token-spent"
    _write_node(db, node)
    return None


def _insert_audit(db: sqlite3.Connection, event: AuditEvent) -> int:
    cur = db.execute(
        "INSERT INTO audit (time, kind, message, revision, release, node, details) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            event.time,
            event.kind,
            event.message,
            event.revision,
            event.release,
            event.node,
            _dumps(event.details),
        ),
    )
    return int(cast(int, cur.lastrowid))


def _put_desired(
    db: sqlite3.Connection, node: str, document: Mapping[str, JSON]
) -> tuple[DesiredRecord, bool]:
    """One node's put_desired inside the caller's transaction."""
    row = db.execute(
        "SELECT node, generation, etag, document FROM desired WHERE node = ?", (node,)
    ).fetchone()
    old = None if row is None else _desired(row)
    rec = records.next_desired(node, old, document)
    if rec is None:
        assert old is not None
        return old, False
    db.execute(
        "INSERT INTO desired (node, generation, etag, document) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (node) DO UPDATE SET generation = excluded.generation, "
        "etag = excluded.etag, document = excluded.document",
        (node, rec.generation, rec.etag, _dumps(rec.document)),
    )
    return rec, True
