"""open_store's URL handling (refused before any connection is tried)."""

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
        ("postgresql://fk:hunter2@127.0.0.1:1/fleet", "carries a password"),
        ("postgresql://fk@127.0.0.1:1/fleet?password=hunter2", "carries a password"),
        ("postgresql://fk@127.0.0.1:1", "name the database"),
        ("mysql://db", "unknown scheme"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        open_store(url)
    assert "hunter2" not in str(err.value)  # the refusal itself must not echo the secret
