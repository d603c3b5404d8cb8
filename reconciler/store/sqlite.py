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
    AuditEvent,
    DesiredRecord,
    ReportRecord,
)
from reconciler.store.files import private_file
from reconciler.store.migrations import LATEST, MIGRATIONS
from reconciler.store.sql import Db, SqlStore

log = logging.getLogger(__name__)


class _Unit(threading.local):
    active = False  # this thread is inside atomic()


class SqliteStore(SqlStore):
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

    def _insert_audit(self, db: Db, event: AuditEvent) -> int:
        return _insert_audit(cast(sqlite3.Connection, db), event)

    def _lock_names(self, db: Db, names: Sequence[str]) -> None:
        pass  # one writer at a time already: BEGIN IMMEDIATE

    def put_desired_many(
        self, documents: Mapping[str, Mapping[str, JSON]]
    ) -> list[tuple[DesiredRecord, bool]]:
        out: list[tuple[DesiredRecord, bool]] = []
        with self._tx() as db:
            for node, document in documents.items():
                out.append(_put_desired(db, node, document))
        return out

    def put_reports(self, reports: Sequence[ReportRecord]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO reports (node, report, received_at) VALUES (?, ?, ?) "
                "ON CONFLICT (node) DO UPDATE SET report = excluded.report, "
                "received_at = excluded.received_at",
                [(r.node, records.dumps(r.report), r.received_at) for r in reports],
            )

    def touch_reports(self, seen: Mapping[str, float]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE reports SET received_at = MAX(received_at, ?) WHERE node = ?",
                [(at, node) for node, at in seen.items()],
            )

    def add_control(self, control: Control, audit: AuditEvent) -> int:
        with self._tx() as db:
            cur = db.execute(
                f"INSERT INTO rollout_controls ({records.CONTROLS.columns}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                records.CONTROLS.row(control),
            )
            seq = int(cast(int, cur.lastrowid))
            _insert_audit(db, replace(audit, details={**audit.details, "seq": seq}))
            return seq

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


def _insert_audit(db: sqlite3.Connection, event: AuditEvent) -> int:
    cur = db.execute(
        f"INSERT INTO audit ({records.AUDIT.columns}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        records.AUDIT.row(event),
    )
    return int(cast(int, cur.lastrowid))


def _put_desired(
    db: sqlite3.Connection, node: str, document: Mapping[str, JSON]
) -> tuple[DesiredRecord, bool]:
    """One node's put_desired inside the caller's transaction."""
    row = db.execute(
        f"SELECT {records.DESIRED.columns} FROM desired WHERE node = ?", (node,)
    ).fetchone()
    old = None if row is None else records.DESIRED.record(row)
    rec = records.next_desired(node, old, document)
    if rec is None:
        assert old is not None
        return old, False
    db.execute(
        f"INSERT INTO desired ({records.DESIRED.columns}) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (node) DO UPDATE SET generation = excluded.generation, "
        "etag = excluded.etag, document = excluded.document",
        records.DESIRED.row(rec),
    )
    return rec, True
