"""`fleetkeeper store migrate`: a real installation moved from SQLite to PostgreSQL.

A real ``fleetkeeper serve`` on SQLite with three real agents rolls a release out; it is
stopped, migrated, and started again on PostgreSQL with the same config: the operators
see the same fleet status and the same audit log (ids and times), the reconciler does
not apply the revision a second time, and the audit log carries on after the old ids.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.helpers.operator_fleet import operated_fleet
from tests.helpers.server import RunningServer, restart


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if token is not None:
        env["FLEETKEEPER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _seen(server: RunningServer) -> tuple[dict[str, Any], list[dict[str, Any]], list[Any]]:
    """What an operator sees: status JSON, the whole audit log, the join tokens."""
    status = cli("status", "--server", server.url, "--format", "json", token=server.admin_token)
    assert status.returncode == 0, status.stderr
    audit = cli("audit", "--server", server.url, "--format", "json", token=server.admin_token)
    assert audit.returncode == 0, audit.stderr
    with server.admin() as c:
        tokens = c.get("/v1/tokens").json()["tokens"]
    return json.loads(status.stdout), json.loads(audit.stdout)["events"], tokens


def _nodes(status: dict[str, Any]) -> list[Any]:
    return [(n["node"], n["health"], n["lastSeen"], n["workloads"]) for n in status["nodes"]]


def _table_rows(sqlite_url: str, postgres_url: str | None = None) -> dict[str, list[Any]]:
    """Every row of every table (but the migration bookkeeping), from SQLite or PostgreSQL."""
    lite = sqlite3.connect(sqlite_url.removeprefix("sqlite://"))
    try:
        tables = [
            str(r[0])
            for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0] not in ("schema_migrations", "sqlite_sequence")
        ]
        if postgres_url is None:
            return {t: sorted(lite.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    finally:
        lite.close()
    with psycopg.connect(postgres_url) as db:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}  # type: ignore[arg-type]


def test_migrate_a_running_installation_to_postgresql(tmp_path: Path, postgres_url: str) -> None:
    with operated_fleet(tmp_path) as fleet:
        fleet.release("1.0.0")
        fleet.wait_release("1.0.0", "Succeeded")
        fleet.server.create_token(node="spare-1", uses=2)
        for agent in fleet.agents:  # nothing changes between the copy and the comparison
            agent.stop()
        status, audit, tokens = _seen(fleet.server)
        assert any(e["kind"] == "applied" for e in audit)
        assert fleet.server.stop() == 0

        sqlite_url = f"sqlite:///{fleet.server.state_dir / 'state.db'}"
        moved = cli("store", "migrate", "--from", sqlite_url, "--to", postgres_url)
        assert moved.returncode == 0, moved.stderr
        counts = dict(line.split() for line in moved.stdout.splitlines()[:-1])
        assert counts["audit"] == str(len(audit))
        assert counts["nodes"] == counts["desired"] == counts["reports"] == "3"
        applied = [e for e in audit if e["kind"] == "applied"]
        assert counts["join_tokens"] == "1" and counts["applied_revisions"] == str(len(applied))
        assert "postgres@" not in moved.stdout  # the target URL is shown redacted

        assert _table_rows(sqlite_url, postgres_url) == _table_rows(sqlite_url)

        config = yaml.safe_load(fleet.server.config_path.read_text())
        config["database"] = postgres_url
        fleet.server.config_path.write_text(yaml.safe_dump(config))
        server = restart(fleet.server)
        try:
            assert "(store postgresql://***@127.0.0.1:" in server.logs()
            status2, audit2, tokens2 = _seen(server)
            assert audit2[: len(audit)] == audit  # same events, same ids, same times
            assert not [e for e in audit2[len(audit) :] if e["kind"] == "applied"]
            assert status2["releases"] == status["releases"]
            assert _nodes(status2) == _nodes(status)
            assert tokens2 == tokens
            # new events continue after the copied ids
            server.create_token(node="spare-2")
            _, audit3, _ = _seen(server)
            assert audit3[-1]["id"] > max(e["id"] for e in audit)

            # a second migration into the now-used database is refused, nothing written
            again = cli("store", "migrate", "--from", sqlite_url, "--to", postgres_url)
            assert again.returncode == 1
            assert "is not empty" in again.stderr and "audit:" in again.stderr, again.stderr
            with psycopg.connect(postgres_url) as db:
                row = db.execute("SELECT count(*) FROM audit").fetchone()
            assert row == (len(audit3),)
        finally:
            assert server.stop() == 0, server.logs()


def test_migrate_refuses_a_missing_source_and_the_wrong_direction(
    tmp_path: Path, postgres_url: str
) -> None:
    missing = cli(
        "store", "migrate", "--from", f"sqlite:///{tmp_path}/nope.db", "--to", postgres_url
    )
    assert missing.returncode == 1 and "no such database file" in missing.stderr
    assert not (tmp_path / "nope.db").exists()  # not created by the attempt
    foreign = tmp_path / "other.db"
    sqlite3.connect(foreign).execute("CREATE TABLE t (x)").connection.close()
    before = foreign.read_bytes()
    refused = cli("store", "migrate", "--from", f"sqlite:///{foreign}", "--to", postgres_url)
    assert refused.returncode == 1 and "not a fleetkeeper database" in refused.stderr
    assert foreign.read_bytes() == before  # left as it was
    backwards = cli("store", "migrate", "--from", postgres_url, "--to", f"sqlite:///{tmp_path}/x")
    assert backwards.returncode == 1 and "expected sqlite:///" in backwards.stderr
