"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a temporary folder.

Registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``), so one
server serves the session and every test gets its own database::

    def test_something(postgres_url: str) -> None:        # a fresh, empty database
        store = open_store(postgres_url)

    def test_failover(postgres: PostgresServer, postgres_url: str) -> None:
        postgres.terminate_backends(postgres_url)         # cut every connection to it
        postgres.restart()                                # or stop() ... start()

The server listens on 127.0.0.1 only (a free port) with trust authentication, except
for the role ``PASSWORD_ROLE`` which must give ``PASSWORD`` (scram-sha-256): tests of
password handling need a server that really checks one. The suite runs as root and
PostgreSQL refuses to, so as root the folder belongs to the ``postgres`` user and every
server command runs through ``runuser -u postgres --``. Without PostgreSQL binaries the
tests skip, except under CI (``CI=true``) where a missing server is a failure.
``PG_BINDIR`` names the binaries' folder when the default search should not decide.
``fsync=off`` keeps the shared 2-core machine fast: it only matters if the OS crashes,
which no test does (commits stay synchronous, so a killed *client* loses nothing).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from tests.helpers.ports import free_port

SUPERUSER = "postgres"
PASSWORD_ROLE = "fleetkeeper_pw"
PASSWORD = "s3cret-pw-for-tests"
START_TIMEOUT = 60
PREFIX = "fleetkeeper-pg-"  # the temporary folders, one per session, in the temp dir


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH);
    ``PG_BINDIR`` picks one (another major version), and only that one."""
    if os.environ.get("PG_BINDIR"):
        chosen = Path(os.environ["PG_BINDIR"])
        return chosen if (chosen / "initdb").is_file() and (chosen / "pg_ctl").is_file() else None
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major, reverse=True)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidates.append(Path(out.stdout.strip()))
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).resolve().parent)
    for d in candidates:
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _major(path: Path) -> int:
    try:
        return int(path.parent.name)
    except ValueError:
        return 0


@dataclass
class PostgresServer:
    """One running ``postgres`` in ``root`` (data, socket, log), on 127.0.0.1:``port``."""

    bindir: Path
    root: Path
    port: int = 0
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT + 30)
        if check and proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}\n"
                f"--- {self.logfile} (tail) ---\n{log}"
            )
        return proc

    def init(self) -> None:
        self.sockdir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
            shutil.chown(self.sockdir, SUPERUSER, SUPERUSER)
        self._run(
            [
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        # first match wins: the password role must authenticate, everyone else is trusted;
        # only 127.0.0.1 and the private socket folder (0700, the server's own user)
        hba = (
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
        )
        self._write_as_server(self.datadir / "pg_hba.conf", hba)

    def _write_as_server(self, path: Path, text: str) -> None:
        path.write_text(text)
        if os.geteuid() == 0:
            shutil.chown(path, SUPERUSER, SUPERUSER)

    def start(self) -> None:
        """Start (again) on the same port; a first start picks a free one (retried)."""
        for attempt in range(5):
            if not self.port:
                self.port = free_port()
            opts = (
                f"-k {self.sockdir} -h 127.0.0.1 -p {self.port} "
                "-c fsync=off -c max_connections=300 -c log_min_messages=warning"
            )
            proc = self._run(
                [
                    "pg_ctl",
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-w",
                    "-t",
                    str(START_TIMEOUT),
                    "-o",
                    opts,
                    "start",
                ],
                check=attempt == 4,
            )
            if proc.returncode == 0:
                return
            self.port = 0  # another process took the port between probe and bind
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast`` (``immediate``: a crash, recovery at the next start)."""
        self._run(["pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast", down_seconds: float = 0.0) -> None:
        """Stop, stay down ``down_seconds``, start on the same port."""
        self.stop(mode)
        time.sleep(down_seconds)
        self.start()

    def is_running(self) -> bool:
        return self._run(["pg_ctl", "-D", str(self.datadir), "status"], check=False).returncode == 0

    # connections

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=10)

    def execute(
        self, query: str, params: Sequence[object] = (), database: str = "postgres"
    ) -> list[tuple[object, ...]]:
        """Run one statement as the superuser (autocommit); the rows it returns, if any."""
        with self.connect(database) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL (user ``postgres``, no password)."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
            )
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = database_of(url)
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def terminate_backends(self, url_or_database: str, application_name: str | None = None) -> int:
        """``pg_terminate_backend`` every other connection to that database (or only those
        of one ``application_name``): what a network partition looks like to the client.
        Returns how many were cut."""
        name = database_of(url_or_database)
        query = (
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()"
        )
        params: list[object] = [name]
        if application_name is not None:
            query += " AND application_name = %s"
            params.append(application_name)
        return sum(1 for (ok,) in self.execute(query, params) if ok)

    def connections(self, url_or_database: str) -> int:
        """How many client connections that database has right now (pools, listeners)."""
        rows = self.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [database_of(url_or_database)],
        )
        return int(str(rows[0][0]))

    def ensure_password_role(self) -> tuple[str, str]:
        """The role that must log in with ``PASSWORD``: (its name, its password)."""
        exists = self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [PASSWORD_ROLE])
        if not exists:
            with self.connect() as conn:
                conn.execute(
                    sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                        sql.Identifier(PASSWORD_ROLE), sql.Literal(PASSWORD)
                    )
                )
        return PASSWORD_ROLE, PASSWORD


def database_of(url_or_database: str) -> str:
    if "://" not in url_or_database:
        return url_or_database
    return urlsplit(url_or_database).path.lstrip("/")


def _reap_orphans(bindir: Path) -> None:
    """Stop and remove servers whose test session died without its teardown (SIGKILL,
    a killed CI job): on a shared machine they would run, and hold memory, forever."""
    for root in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            owner = int((root / "owner.pid").read_text())
            os.kill(owner, 0)
            continue  # its session is alive
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # being created right now, or not ours
        orphan = PostgresServer(bindir=bindir, root=root)
        with contextlib.suppress(Exception):
            if orphan.datadir.exists() and orphan.is_running():
                orphan.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(bindir: Path) -> Iterator[PostgresServer]:
    """Start a server in a fresh temporary folder; stop it (fast) and remove the folder."""
    _reap_orphans(bindir)
    # not under pytest's tmp folder: that one is 0700 root, the postgres user can't enter it
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    (root / "owner.pid").write_text(str(os.getpid()))
    server = PostgresServer(bindir=bindir, root=root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(Exception):
            if server.is_running():
                server.stop("fast")
        shutil.rmtree(root, ignore_errors=True)


def require_bindir() -> Path:
    """The binaries, or skip the test (fail it under ``CI=true``) saying what is missing."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found: install the postgresql package"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)
    return bindir


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started on first use)."""
    with postgres_server(require_bindir()) as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh empty database for this test; dropped afterwards (connections forced out)."""
    if not postgres.is_running():  # a test that stopped the server and failed before start()
        postgres.start()
    url = postgres.create_database()
    yield url
    with contextlib.suppress(psycopg.Error):
        postgres.drop_database(url)
