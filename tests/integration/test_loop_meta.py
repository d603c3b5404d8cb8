"""The loop's store meta codec on a real SQLite store: tolerant reads, writes only on change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.loop import meta
from reconciler.store import open_store
from reconciler.store.base import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield s
    finally:
        s.close()


def test_missing_keys_read_empty(store: Store) -> None:
    assert meta.CONDITIONS.read(store) == []
    assert meta.TIP_STATUS.read(store) == []
    assert meta.AUDIT_SEEN.read(store) == []
    assert meta.STALE_NODES.read(store) == frozenset()


def test_damaged_or_old_values_read_without_raising(store: Store) -> None:
    store.set_meta("conditions", "{not json")
    assert meta.CONDITIONS.read(store) == []
    store.set_meta("tip-status", '{"releases": [{"agent": "web"}, 3]}')  # an older shape
    assert meta.TIP_STATUS.read(store) == [{"agent": "web"}]
    store.set_meta("stale-nodes", '"n1"')  # not a list
    assert meta.STALE_NODES.read(store) == frozenset()


def test_write_only_when_the_value_changes(store: Store) -> None:
    assert meta.STALE_NODES.write(store, frozenset({"b", "a"}))
    assert store.get_meta("stale-nodes") == '["a","b"]'  # canonical: sorted, compact
    assert not meta.STALE_NODES.write(store, frozenset({"a", "b"}))
    assert not meta.TIP_STATUS.write(store, [])  # empty and absent are the same
    assert store.get_meta("tip-status") is None


def test_audit_seen_keeps_the_newest(store: Store) -> None:
    keys = [f"refused:{i}" for i in range(meta.AUDIT_SEEN_LIMIT + 10)]
    meta.AUDIT_SEEN.put(store, keys)
    assert meta.AUDIT_SEEN.read(store) == keys[-meta.AUDIT_SEEN_LIMIT :]
