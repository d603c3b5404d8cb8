"""Durable state of the reconciler: SQLite by default (WAL), PostgreSQL for several replicas.

``base.Store`` is the narrow interface every backend implements; ``open_store(url)``
picks the backend from the database URL.
"""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.store.base import Store
from reconciler.store.urls import redact_url


def sqlite_path(url: str) -> str:
    """The file path in ``sqlite:///abs/path.db`` (or ``sqlite:////abs``, ``sqlite://:memory:``)."""
    rest = url[len("sqlite://") :]
    if rest in ("", "/:memory:", ":memory:"):
        return ":memory:"
    if rest.startswith("//"):
        rest = rest[1:]
    if not rest.startswith("/"):
        raise ConfigError(f"database {url!r}: use an absolute path, e.g. sqlite:///var/lib/x.db")
    return rest


def open_store(url: str) -> Store:
    """Open (and migrate) the store named by ``url``."""
    if url.startswith("sqlite://"):
        from reconciler.store.sqlite import SqliteStore

        return SqliteStore(sqlite_path(url))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from reconciler.store.postgres import PostgresStore
        except ImportError as exc:  # the base install has no database driver
            raise ConfigError(
                f"database {redact_url(url)}: the PostgreSQL backend needs psycopg "
                f"({exc}); install fleetkeeper[server]"
            ) from exc
        return PostgresStore(url)
    raise ConfigError(
        f"database {redact_url(url)!r}: unknown scheme; expected sqlite:///<path> or "
        "postgresql://user@host:port/dbname"
    )


__all__ = ["Store", "open_store", "redact_url", "sqlite_path"]
