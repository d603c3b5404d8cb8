"""open_store's URL handling (pure parsing; no database is opened)."""

from __future__ import annotations

import pytest

from reconciler.errors import ConfigError
from reconciler.store import open_store, sqlite_path


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("sqlite:///var/lib/fleetkeeper/state.db", "/var/lib/fleetkeeper/state.db"),
        ("sqlite:////var/lib/fleetkeeper/state.db", "/var/lib/fleetkeeper/state.db"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
    ],
)
def test_sqlite_path(url: str, want: str) -> None:
    assert sqlite_path(url) == want


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite://relative.db", "absolute path"),
        ("postgresql://db/fleet", "PostgreSQL backend is not available"),
        ("mysql://db", "unknown scheme"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_store(url)
