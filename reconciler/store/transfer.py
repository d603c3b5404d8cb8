"""``fleetkeeper store migrate``: move an installation from SQLite to PostgreSQL.

Every table is copied row by row with its ids and timestamps (the audit history stays
exactly what it was, and audit ids keep counting from where they were), in one
PostgreSQL transaction that first takes an exclusive lock on every table: a failed copy
leaves the target as empty as it was, and no replica can write while it runs.

The target must be empty: its audit log is append-only in the database, so merging two
histories (or "overwriting" one) is not possible, and there is deliberately no
``--force``. A copy that went wrong is retried into a freshly created database.
The source is opened read-only; stop ``fleetkeeper serve`` first (a running one would
keep writing to the file after the copy).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from reconciler.errors import ConfigError
from reconciler.store import open_store, redact_url, sqlite_path
from reconciler.store.postgres import MIGRATION_LOCK, connection_params

log = logging.getLogger(__name__)

# bookkeeping of each database itself, never copied (the target has its own)
_NOT_COPIED = frozenset({"schema_migrations", "sqlite_sequence"})


def migrate_sqlite_to_postgres(source: str, target: str) -> Mapping[str, int]:
    """Copy the store at ``source`` (sqlite:///...) into ``target`` (postgresql://...).

    Returns the number of rows copied per table. Raises ConfigError (nothing written)
    when a URL is wrong, the source file is missing or the target is not empty.
    """
    if not source.startswith("sqlite://"):
        raise ConfigError(f"--from {redact_url(source)}: expected sqlite:///<path>")
    if not target.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--to {redact_url(target)}: expected postgresql://user@host/db")
    path = sqlite_path(source)
    if path == ":memory:" or not Path(path).is_file():
        raise ConfigError(f"--from {source}: no such database file")
    _check_fleetkeeper_file(path, source)
    # both to the same schema version first: then the tables and columns match
    open_store(source).close()
    open_store(target).close()
    src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        src.execute("BEGIN")  # one consistent snapshot of the source
        tables = _sqlite_tables(src)
        with psycopg.connect(**connection_params(target)) as dst:  # type: ignore[arg-type]
            return _copy(src, dst, tables, redact_url(target))
    finally:
        src.close()


def _check_fleetkeeper_file(path: str, source: str) -> None:
    """Refuse a file that is not a fleetkeeper store before anything writes to it."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            ).fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"--from {source}: not a SQLite database ({exc})") from exc
    if found is None:
        raise ConfigError(f"--from {source}: not a fleetkeeper database (no schema_migrations)")


def _sqlite_tables(src: sqlite3.Connection) -> dict[str, list[str]]:
    names = [
        str(r[0])
        for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        if r[0] not in _NOT_COPIED
    ]
    return {t: [str(c[1]) for c in src.execute(f'PRAGMA table_info("{t}")')] for t in names}


def _copy(
    src: sqlite3.Connection,
    dst: psycopg.Connection[tuple[Any, ...]],
    tables: Mapping[str, Sequence[str]],
    target: str,
) -> dict[str, int]:
    with dst.transaction():
        dst.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        _check_same_tables(dst, tables, target)
        names = sql.SQL(", ").join(sql.Identifier(t) for t in tables)
        dst.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(names))
        busy = {t: n for t in tables if (n := _count(dst, t))}
        if busy:
            shown = ", ".join(f"{t}: {n} rows" for t, n in sorted(busy.items()))
            raise ConfigError(
                f"--to {target} is not empty ({shown}); migrate into a new empty database "
                "(createdb): the audit log there is append-only, so nothing is overwritten"
            )
        counts: dict[str, int] = {}
        for table, columns in tables.items():
            counts[table] = _copy_table(src, dst, table, columns)
            if _count(dst, table) != counts[table]:  # a trigger or rule swallowed rows
                raise ConfigError(f"--to {target}: table {table} did not take every row")
        _advance_identities(dst, tables)
    return counts


def _check_same_tables(
    dst: psycopg.Connection[tuple[Any, ...]], tables: Mapping[str, Sequence[str]], target: str
) -> None:
    rows = dst.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
    ).fetchall()
    have: dict[str, list[str]] = {}
    for table, column in rows:
        have.setdefault(str(table), []).append(str(column))
    for table, columns in tables.items():
        if sorted(have.get(table, [])) != sorted(columns):
            raise ConfigError(
                f"--to {target}: table {table} has columns {have.get(table, [])}, the source "
                f"{list(columns)}: not the same fleetkeeper schema"
            )


def _copy_table(
    src: sqlite3.Connection,
    dst: psycopg.Connection[tuple[Any, ...]],
    table: str,
    columns: Sequence[str],
) -> int:
    cols = ", ".join(f'"{c}"' for c in columns)
    order = "id" if "id" in columns else "rowid"
    copy = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    n = 0
    with dst.cursor() as cur, cur.copy(copy) as out:
        for row in src.execute(f'SELECT {cols} FROM "{table}" ORDER BY {order}'):
            out.write_row(row)
            n += 1
    log.info("store migrate: %s: %d rows", table, n)
    return n


def _count(dst: psycopg.Connection[tuple[Any, ...]], table: str) -> int:
    row = dst.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    return 0 if row is None else int(row[0])


def _advance_identities(
    dst: psycopg.Connection[tuple[Any, ...]], tables: Mapping[str, Sequence[str]]
) -> None:
    """Copied ids were given explicitly: new rows must continue after the largest."""
    rows = dst.execute(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND is_identity = 'YES'"
    ).fetchall()
    for table, column in rows:
        if table not in tables:
            continue
        dst.execute(
            sql.SQL(
                "SELECT setval(pg_get_serial_sequence({t}, {c}), "
                "COALESCE(MAX({ci}), 0) + 1, false) FROM {ti}"
            ).format(
                t=sql.Literal(str(table)),
                c=sql.Literal(str(column)),
                ci=sql.Identifier(str(column)),
                ti=sql.Identifier(str(table)),
            )
        )
