"""The PostgreSQL test server itself: databases per test, restarts, cut connections."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.helpers.postgres import PASSWORD, PostgresServer, find_bindir, require_bindir


def test_each_test_gets_an_empty_database_on_localhost(
    postgres: PostgresServer, postgres_url: str
) -> None:
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres.port}/")
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        version = conn.execute("SHOW server_version_num").fetchone()
    assert tables == (0,)
    assert version is not None and int(str(version[0])) >= 150000


def test_terminate_backends_cuts_a_live_connection(
    postgres: PostgresServer, postgres_url: str
) -> None:
    conn = psycopg.connect(postgres_url, autocommit=True, application_name="victim")
    try:
        conn.execute("SELECT 1")
        assert postgres.connections(postgres_url) == 1
        assert postgres.terminate_backends(postgres_url, application_name="victim") == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_restart_keeps_the_port_and_the_data(postgres: PostgresServer, postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
    port = postgres.port
    postgres.restart()
    assert postgres.port == port
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_the_password_role_needs_its_password(postgres: PostgresServer, postgres_url: str) -> None:
    user, password = postgres.ensure_password_role()
    url = postgres_url.replace("postgres@", f"{user}@")
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(url, connect_timeout=5).close()
    with psycopg.connect(url, password=password, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (user,)
    assert password == PASSWORD


def test_missing_binaries_skip_with_a_reason_but_fail_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    installed = find_bindir()
    monkeypatch.setenv("PG_BINDIR", str(tmp_path / "nowhere"))
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception, match=r"initdb, pg_ctl\) not found"):
        require_bindir()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: PostgreSQL tests must run"):
        require_bindir()
    if installed is not None:  # a folder that has them is taken as it is
        monkeypatch.setenv("PG_BINDIR", str(installed))
        assert require_bindir() == installed
