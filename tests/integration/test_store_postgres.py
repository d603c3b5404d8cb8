"""PostgreSQL specifics of the store, on a real server (tests/helpers/postgres.py).

The behaviour every backend shares is in test_store_contract.py; here: the append-only
rules enforced by the database, migrations racing at start-up, the schema matching
SQLite's, durability when the writer dies, reconnecting after a restart or a cut
connection, and where the password comes from.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest

from reconciler.errors import ConfigError
from reconciler.plan.controls import Control
from reconciler.store import migrations, open_store, pg_migrations
from reconciler.store.base import AppliedRevision, AuditEvent, ReportRecord
from reconciler.store.pg_migrations import LATEST
from reconciler.store.postgres import make_durable
from tests.helpers.postgres import PostgresServer
from tests.helpers.wait import wait_until


def _raw(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


def test_audit_and_history_are_append_only_in_the_database(postgres_url: str) -> None:
    store = open_store(postgres_url)
    store.append_audit(AuditEvent(time=1.0, kind="applied", message="applied a"))
    store.set_applied_revision(AppliedRevision("a" * 40, {"kind": "merge"}, 1.0))
    store.observe(["b" * 40], 5.0)
    pause = Control(0, "app", "pause", "fp", "alice", "freeze", 1.0)
    store.add_control(pause, AuditEvent(time=1.0, kind="rollout-pause", message="paused"))
    store.close()
    # a raw connection, as an intruder or a careless operator with psql would hold
    with _raw(postgres_url) as db:
        for statement, match in [
            ("UPDATE audit SET message = 'nothing happened'", "audit log is append-only"),
            ("DELETE FROM audit", "audit log is append-only"),
            ("TRUNCATE audit", "audit log is append-only"),
            ("UPDATE applied_revisions SET sha = 'x'", "applied revisions are append-only"),
            ("DELETE FROM applied_revisions", "applied revisions are append-only"),
            ("TRUNCATE applied_revisions", "applied revisions are append-only"),
            ("UPDATE observed_objects SET first_seen = 0", "never rewritten"),
            ("UPDATE rollout_controls SET reason = 'x'", "rollout controls are append-only"),
            ("DELETE FROM rollout_controls", "rollout controls are append-only"),
            ("TRUNCATE rollout_controls", "rollout controls are append-only"),
        ]:
            with pytest.raises(psycopg.errors.RestrictViolation, match=match):
                db.execute(statement)  # type: ignore[arg-type]
        assert db.execute("SELECT message FROM audit ORDER BY id").fetchall() == [
            ("applied a",),
            ("paused",),
        ]
        assert db.execute("SELECT first_seen FROM observed_objects").fetchall() == [(5.0,)]
        assert db.execute("SELECT reason FROM rollout_controls").fetchall() == [("freeze",)]
        db.execute("INSERT INTO audit (time, kind, message, details) VALUES (2, 'x', 'y', '{}')")


_OPENER = textwrap.dedent(
    """
    import logging, sys, time
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from reconciler.store import open_store
    start = float(sys.argv[2])
    while time.time() < start:
        pass  # spin: every process leaves the line at the same instant
    open_store(sys.argv[1]).close()
    print("opened", flush=True)
    """
)


def test_replicas_starting_together_apply_each_migration_once(postgres_url: str) -> None:
    start = time.time() + 2.0  # after every interpreter has imported psycopg
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, postgres_url, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    applied = [line for out in outputs for line in out.splitlines() if "applied migration" in line]
    assert sorted(int(line.split()[3]) for line in applied) == list(range(1, LATEST + 1)), applied
    with _raw(postgres_url) as db:
        versions = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert versions == list(range(1, LATEST + 1))


def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    open_store(postgres_url).close()
    with _raw(postgres_url) as db:
        db.execute("INSERT INTO schema_migrations VALUES (%s, 0)", (LATEST + 1,))
    with pytest.raises(ConfigError, match="newer than this fleetkeeper"):
        open_store(postgres_url)


def test_both_backends_know_the_same_migration_versions() -> None:
    # a database moved between them (store migrate) keeps its meaning: a new migration
    # goes into reconciler/store/migrations.py and pg_migrations.py with one version
    assert [v for v, _ in pg_migrations.MIGRATIONS] == [v for v, _ in migrations.MIGRATIONS]


def test_the_schema_is_sqlites_table_for_table(postgres_url: str, tmp_path: Path) -> None:
    open_store(f"sqlite:///{tmp_path / 's.db'}").close()
    open_store(postgres_url).close()
    lite = sqlite3.connect(tmp_path / "s.db")
    try:
        tables = [
            r[0]
            for r in lite.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        want = {
            t: [(c[1], bool(c[3])) for c in lite.execute(f"PRAGMA table_info({t})")] for t in tables
        }
    finally:
        lite.close()
    with _raw(postgres_url) as db:
        rows = db.execute(
            "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    got: dict[str, list[tuple[str, bool]]] = {}
    for table, column, nullable in rows:
        got.setdefault(str(table), []).append((str(column), nullable == "NO"))
    # SQLite reports NOT NULL only where declared; a PRIMARY KEY is implicitly NOT NULL here
    for table, columns in want.items():
        assert [c for c, _ in got[table]] == [c for c, _ in columns], table
    assert sorted(got) == sorted(want)


def test_sessions_commit_synchronously_even_when_the_server_says_off(
    postgres: PostgresServer, postgres_url: str
) -> None:
    with _raw(postgres_url) as db:
        db.execute("SET synchronous_commit = off")
        make_durable(db)
        assert db.execute("SHOW synchronous_commit").fetchone() == ("on",)
        db.execute("SET synchronous_commit = remote_apply")  # stricter: left alone
        make_durable(db)
        assert db.execute("SHOW synchronous_commit").fetchone() == ("remote_apply",)


_WRITER = textwrap.dedent(
    """
    import sys
    from reconciler.store import open_store
    from reconciler.store.base import AuditEvent
    store = open_store(sys.argv[1])
    for i in range(100000):
        event_id = store.append_audit(AuditEvent(time=float(i), kind="report", message=str(i)))
        print(event_id, flush=True)  # acknowledged: the method returned
    """
)


def test_acknowledged_writes_survive_a_killed_writer_and_a_crashed_server(
    postgres: PostgresServer, postgres_url: str
) -> None:
    open_store(postgres_url).close()
    with subprocess.Popen(
        [sys.executable, "-c", _WRITER, postgres_url], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        acknowledged = [int(proc.stdout.readline()) for _ in range(200)]
        os.kill(proc.pid, signal.SIGKILL)
        acknowledged += [int(line) for line in proc.stdout.read().split()]
    postgres.stop("immediate")  # no shutdown checkpoint: recovery replays the WAL
    postgres.start()
    with _raw(postgres_url) as db:
        stored = {int(str(r[0])) for r in db.execute("SELECT id FROM audit")}
    assert set(acknowledged) <= stored, sorted(set(acknowledged) - stored)[:10]


def test_the_store_reconnects_after_a_restart_and_cut_connections(
    postgres: PostgresServer, postgres_url: str
) -> None:
    store = open_store(postgres_url)
    try:
        store.put_report(ReportRecord("n1", {"generation": 1}, 1.0))
        postgres.stop("fast")
        started = time.monotonic()
        with pytest.raises(psycopg.Error):
            store.ping()  # /readyz: not ready, and it says so quickly
        assert time.monotonic() - started < 10
        postgres.start()
        store.put_report(ReportRecord("n1", {"generation": 2}, 2.0))
        assert postgres.terminate_backends(postgres_url) >= 1  # the pool's idle connection
        store.put_report(ReportRecord("n1", {"generation": 3}, 3.0))
        store.ping()
        assert [r.report for r in store.reports()] == [{"generation": 3}]
    finally:
        store.close()
    # close() closed every connection; a backend leaves pg_stat_activity a moment after
    # its client hangs up (it exits on its own), so poll rather than read once
    wait_until(
        "the store's connections to end", lambda: postgres.connections(postgres_url) == 0, 10
    )


def test_the_password_comes_from_a_pgpass_file(
    postgres: PostgresServer, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user, password = postgres.ensure_password_role()
    db = postgres_url.rsplit("/", 1)[1]
    url = f"postgresql://{user}@127.0.0.1:{postgres.port}/{db}"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    with pytest.raises(ConfigError, match="password") as refused:
        open_store(url)  # the server demands one and none is configured
    assert "cannot open database postgresql://***@127.0.0.1" in str(refused.value)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:{db}:{user}:{password}\n")
    passfile.chmod(0o600)  # libpq ignores a pgpass file others can read
    store = open_store(f"{url}?passfile={passfile}")
    store.set_meta("k", "v")
    store.close()
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    store = open_store(url)
    assert store.get_meta("k") == "v"
    store.close()


def test_an_unreachable_server_is_a_clear_error(postgres: PostgresServer) -> None:
    with pytest.raises(
        ConfigError, match=r"cannot open database postgresql://\*\*\*@127.0.0.1:1/x"
    ):
        open_store("postgresql://fleetkeeper@127.0.0.1:1/x")


def _desired_doc(node: str, version: str) -> dict[str, object]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": node,
        "generation": 0,
        "revision": "a" * 40,
        "approval": {"kind": "merge", "ref": "a" * 40, "signers": []},
        "workloads": [{"name": "agent", "kind": "process", "version": version}],
    }


def test_two_replicas_writing_at_once_never_fork_generations_or_deadlock(
    postgres_url: str,
) -> None:
    """Two stores (two replicas' pools) hammer the same rows: every desired change gets its
    own generation, and batched report writes in opposite orders never deadlock."""
    stores = [open_store(postgres_url), open_store(postgres_url)]
    nodes = [f"n{i:03d}" for i in range(200)]
    generations: list[int] = []
    errors: list[BaseException] = []

    def work(who: int) -> None:
        store = stores[who]
        order = nodes if who == 0 else nodes[::-1]
        try:
            for i in range(15):
                rec, changed = store.put_desired("n000", _desired_doc("n000", f"{who}.{i}"))
                assert changed
                generations.append(rec.generation)
                store.put_reports([ReportRecord(n, {"generation": i}, float(i)) for n in order])
                store.touch_reports({n: float(100 + i) for n in order})
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(who,)) for who in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == []
        assert sorted(generations) == list(range(1, 31))  # 30 changes, 30 generations
        final = stores[0].desired("n000")
        assert final is not None and final.generation == 30
        assert {r.received_at for r in stores[1].reports()} == {114.0}
    finally:
        for s in stores:
            s.close()


def test_writes_resume_by_themselves_after_a_restart_under_load(
    postgres: PostgresServer, postgres_url: str
) -> None:
    """A writer keeps writing while PostgreSQL restarts: a call during the outage fails or
    waits for a new connection (the caller retries, as the loop does), every acknowledged
    write is kept, and writes work again without reopening the store."""
    store = open_store(postgres_url)
    acknowledged: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                acknowledged.append(store.append_audit(AuditEvent(float(i), "report", str(i))))
            except psycopg.Error as exc:
                failures.append(type(exc).__name__)
                time.sleep(0.05)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.5)
        postgres.restart("fast", down_seconds=1.0)
        before = len(acknowledged)
        deadline = time.monotonic() + 30
        while len(acknowledged) < before + 50:  # writing again, same store object
            assert time.monotonic() < deadline, f"no writes after the restart: {failures[-3:]}"
            time.sleep(0.05)
    finally:
        stop.set()
        writer.join(timeout=60)
    try:
        stored = {e.id for e in store.audit(limit=1_000_000)}
        assert set(acknowledged) <= stored
    finally:
        store.close()
