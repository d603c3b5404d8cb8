"""Durable state of the reconciler: SQLite by default (WAL), PostgreSQL for several replicas.

``base.Store`` is the narrow interface every backend implements; ``open_store(url)``
picks the backend from the database URL.
"""

from __future__ import annotations

from reconciler.errors import ConfigError
from reconciler.store.base import Store


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
        raise ConfigError(
            "database: the PostgreSQL backend is not available in this version; "
            "use sqlite:///<path> (the default)"
        )
    raise ConfigError(f"database {url!r}: unknown scheme; expected sqlite:///<path>")


__all__ = ["Store", "open_store", "sqlite_path"]
