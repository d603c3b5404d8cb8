"""PostgreSQL backend of the store: psycopg 3 over a connection pool, for several replicas.

``database: postgresql://user@host:port/dbname[?param=...]`` takes any libpq parameter
(``sslmode``, ``application_name``, ``connect_timeout``, ...). The password never sits in
the URL (which lands in config files, ``ps`` and logs): a URL carrying one is refused.
libpq reads it from a pgpass file (``?passfile=/etc/fleetkeeper/pgpass``, ``PGPASSFILE``
or ``~/.pgpass``) or from ``PGPASSWORD``. Messages show the URL through ``redact_url``.

Schema: the same versions as SQLite (``pg_migrations``), applied at open under
``pg_advisory_xact_lock(MIGRATION_LOCK)``: replicas starting at the same instant apply
each version exactly once; the others wait, then find it applied. The audit log, the
applied revisions and first observations are append-only *in the database* (triggers).

Durability: commits are synchronous (``synchronous_commit`` is raised to ``on`` for our
sessions when the server default says ``off``; a stricter server setting such as
``remote_apply`` is kept), so a method that returned is on the server's disk and survives
the replica's death. Each method is one transaction.

Concurrency: unlike SQLite's single writer, transactions run side by side, so the
read-then-write methods serialise where they must: ``claim_node`` writes conditionally
(``ON CONFLICT DO NOTHING`` / ``WHERE token_hash = ...``), ``put_desired_many`` and
``append_audit`` take a transaction-scoped advisory lock (generations never fork; audit
ids commit in id order, so a reader paging by id never skips a late commit). Batched
writes are one statement over arrays, in sorted node order (no deadlock between two).
Connections are checked on checkout (``check_connection``): after a PostgreSQL restart or
a ``pg_terminate_backend`` the next call gets a fresh connection.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

import reconciler.store.records as records
from reconciler.errors import ConfigError
from reconciler.plan.controls import Control
from reconciler.spec import JSON
from reconciler.store.base import (
    AuditEvent,
    DesiredRecord,
    ReportRecord,
)
from reconciler.store.pg_migrations import LATEST, MIGRATIONS
from reconciler.store.sql import Db, SqlStore
from reconciler.store.urls import redact_url

log = logging.getLogger(__name__)

# Transaction-scoped advisory lock keys (one bigint space per database). Leader election
# or anything else taking advisory locks in the same database must use other keys.
MIGRATION_LOCK = 0x666B_0001  # "fk" 1
DESIRED_LOCK = 0x666B_0002
AUDIT_LOCK = 0x666B_0003
NODE_LOCKS = 0x666B  # (NODE_LOCKS, hashtext(name)) in the two-int key space: one per name

POOL_MIN = 1
POOL_MAX = 10  # the API's worker threads, the loop and the lastSeen flusher
CONNECT_TIMEOUT = 5  # seconds, unless the URL says connect_timeout=
WAIT_TIMEOUT = 30.0  # a call waits this long for a connection (PostgreSQL restarting)
PING_TIMEOUT = 3.0  # /readyz answers quickly when the database is gone

Conn = psycopg.Connection[tuple[Any, ...]]


def connection_params(url: str) -> dict[str, str]:
    """libpq parameters of ``url``; a password in it is refused (see the module doc)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"database {redact_url(url)}: not a PostgreSQL URL: {exc}") from exc
    if "password" in params:
        raise ConfigError(
            f"database {redact_url(url)}: the URL carries a password; keep it out of the "
            "config: use a pgpass file (?passfile=/path, PGPASSFILE or ~/.pgpass) or "
            "PGPASSWORD"
        )
    if not params.get("dbname"):
        raise ConfigError(
            f"database {redact_url(url)}: name the database, "
            "e.g. postgresql://fleetkeeper@db.example:5432/fleetkeeper"
        )
    out = {k: str(v) for k, v in params.items() if v is not None}
    out.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    out.setdefault("application_name", "fleetkeeper")
    return out


def make_durable(conn: Conn) -> None:
    """Each new pooled connection: commits wait for the server's disk (see module doc)."""
    row = conn.execute("SHOW synchronous_commit").fetchone()
    if row is not None and row[0] == "off":
        conn.execute("SET synchronous_commit = on")
    conn.commit()


class _Unit(threading.local):
    conn: Conn | None = None  # the connection of this thread's atomic() block


class PostgresStore(SqlStore):
    """The Store protocol over a PostgreSQL database (``url`` as in the module doc)."""

    def __init__(self, url: str) -> None:
        self.url = redact_url(url)
        self._params = connection_params(url)
        self._closed = False
        self._close_lock = threading.Lock()
        self._unit = _Unit()
        self._migrate()
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            kwargs=dict(self._params),
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            timeout=WAIT_TIMEOUT,
            check=ConnectionPool.check_connection,
            configure=make_durable,
            name="fleetkeeper-store",
            open=False,
        )
        self._pool.open()

    # plumbing

    _q = staticmethod(functools.cache(lambda query: query.replace("?", "%s")))

    def _connect(self) -> Conn:
        try:
            return psycopg.connect(**self._params)  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise ConfigError(f"cannot open database {self.url}: {redact_url(str(exc))}") from exc

    def _migrate(self) -> None:
        with self._connect() as conn:
            make_durable(conn)
            for version, statements in MIGRATIONS:
                with conn.transaction():
                    if version <= self._locked_version(conn):
                        continue  # done long ago, or by a replica that started with us
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (%s, %s)",
                        (version, time.time()),
                    )
                log.info("store: applied migration %d to %s", version, self.url)

    def _locked_version(self, conn: Conn) -> int:
        """The schema version, read under the migration lock (held until the transaction
        ends: a second opener waits here, then sees what the first applied)."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
        )
        current = _version(conn)
        if current > LATEST:
            raise ConfigError(
                f"database {self.url} has schema version {current}, newer than this "
                f"fleetkeeper knows ({LATEST}); upgrade fleetkeeper or use another database"
            )
        return current

    @contextmanager
    def _tx(self, timeout: float | None = None) -> Iterator[Conn]:
        """One transaction on a pooled connection: committed on exit, rolled back on error."""
        if self._closed:
            raise psycopg.InterfaceError("the store is closed")
        held = self._unit.conn
        if held is not None:  # inside atomic() on this thread: its transaction is ours
            yield held
            return
        with self._pool.connection(timeout=timeout) as conn, conn.transaction():
            yield conn

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self._unit.conn is not None:
            yield
            return
        with self._tx() as conn:
            self._unit.conn = conn
            try:
                yield
            finally:
                self._unit.conn = None

    def _read(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._tx() as conn:
            return list(conn.execute(query, params).fetchall())

    # protocol

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._pool.close()

    def ping(self) -> None:
        with self._tx(timeout=PING_TIMEOUT) as conn:
            conn.execute("SELECT 1")

    def _insert_audit(self, db: Db, event: AuditEvent) -> int:
        return _insert_audit(cast(Conn, db), event)

    def _lock_names(self, db: Db, names: Sequence[str]) -> None:
        _lock_names(cast(Conn, db), names)

    def put_desired_many(
        self, documents: Mapping[str, Mapping[str, JSON]]
    ) -> list[tuple[DesiredRecord, bool]]:
        if not documents:
            return []
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (DESIRED_LOCK,))
            rows = conn.execute(
                f"SELECT {records.DESIRED.columns} FROM desired WHERE node = ANY(%b)",
                (list(documents),),
            ).fetchall()
            stored = {r[0]: records.DESIRED.record(r) for r in rows}
            out: list[tuple[DesiredRecord, bool]] = []
            changed: dict[str, DesiredRecord] = {}
            for node, document in documents.items():
                old = stored.get(node)
                rec = records.next_desired(node, old, document)
                if rec is None:
                    assert old is not None
                    out.append((old, False))
                else:
                    changed[node] = rec
                    out.append((rec, True))
            if changed:
                new = [changed[n] for n in sorted(changed)]
                conn.execute(
                    f"INSERT INTO desired ({records.DESIRED.columns}) "
                    "SELECT * FROM unnest(%b::text[], %b::int8[], %b::text[], %b::text[]) "
                    "ORDER BY 1 ON CONFLICT (node) DO UPDATE SET "
                    "generation = excluded.generation, etag = excluded.etag, "
                    "document = excluded.document",
                    (
                        [r.node for r in new],
                        [r.generation for r in new],
                        [r.etag for r in new],
                        [records.dumps(r.document) for r in new],
                    ),
                )
        return out

    def put_reports(self, reports: Sequence[ReportRecord]) -> None:
        last = {r.node: r for r in reports}  # the later of two reports of one node wins
        if not last:
            return
        rows = sorted(last.items())
        # one statement over arrays: a 10,000-report flush is one round trip, not 10,000
        # (arrays sent binary, %b: psycopg's text-array quoting costs more than the write);
        # rows go in node order, so two replicas' flushes never deadlock
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO reports (node, report, received_at) "
                "SELECT * FROM unnest(%b::text[], %b::text[], %b::float8[]) ORDER BY 1 "
                "ON CONFLICT (node) DO UPDATE SET report = excluded.report, "
                "received_at = excluded.received_at",
                (
                    [n for n, _ in rows],
                    [records.dumps(r.report) for _, r in rows],
                    [r.received_at for _, r in rows],
                ),
            )

    def touch_reports(self, seen: Mapping[str, float]) -> None:
        if not seen:
            return
        nodes, times = zip(*sorted(seen.items()), strict=True)
        with self._tx() as conn:
            # lock the rows in node order first: an UPDATE ... FROM visits them in any order
            conn.execute(
                "SELECT 1 FROM reports WHERE node = ANY(%b) ORDER BY node FOR UPDATE",
                (list(nodes),),
            )
            conn.execute(
                "UPDATE reports AS r SET received_at = GREATEST(r.received_at, v.at) "
                "FROM unnest(%b::text[], %b::float8[]) AS v(node, at) WHERE r.node = v.node",
                (list(nodes), list(times)),
            )

    def add_control(self, control: Control, audit: AuditEvent) -> int:
        with self._tx() as conn:
            # the audit lock, taken before the insert, makes seqs commit in seq order too:
            # the planner asks for controls(after=last seen) and must never skip one
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
            row = conn.execute(
                f"INSERT INTO rollout_controls ({records.CONTROLS.columns}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING seq",
                records.CONTROLS.row(control),
            ).fetchone()
            assert row is not None
            seq = int(row[0])
            _insert_audit(conn, replace(audit, details={**audit.details, "seq": seq}))
            return seq

    def observe(self, shas: Sequence[str], now: float) -> Mapping[str, float]:
        wanted = sorted(set(shas))
        if not wanted:
            return {}
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO observed_objects (sha, first_seen) "
                "SELECT unnest(%b::text[]), %s ON CONFLICT (sha) DO NOTHING",
                (wanted, now),
            )
            rows = conn.execute(
                "SELECT sha, first_seen FROM observed_objects WHERE sha = ANY(%b)", (wanted,)
            ).fetchall()
        return {str(sha): float(at) for sha, at in rows}


def _insert_audit(conn: Conn, event: AuditEvent) -> int:
    """Append ``event`` inside the caller's transaction. The lock (held to the commit)
    makes ids commit in id order: a reader paging by id never skips a late commit."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK,))
    row = conn.execute(
        f"INSERT INTO audit ({records.AUDIT.columns}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
        records.AUDIT.row(event),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _lock_names(conn: Conn, names: Sequence[str]) -> None:
    """Lock node names (not rows: there may be none yet) until the commit, in sorted
    order (two transactions locking overlapping sets cannot deadlock): read-check-write
    of a name is then atomic across replicas, as under SQLite's single writer."""
    for name in sorted(set(names)):
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (NODE_LOCKS, name))


def _version(conn: Conn) -> int:
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return 0 if row is None else int(row[0])
