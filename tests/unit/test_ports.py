"""The test suite's port picker: outside the ephemeral range, one slice per xdist worker."""

from __future__ import annotations

import socket

import pytest

from tests.helpers import ports


def test_ports_are_bindable_distinct_and_never_ephemeral() -> None:
    lo, hi = ports._ephemeral_range()
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == 50, picked
    assert not [p for p in picked if lo <= p <= hi], (lo, hi, picked)
    with socket.socket() as s:
        s.bind(("127.0.0.1", picked[-1]))  # really free


def test_each_xdist_worker_draws_from_its_own_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, set[int]] = {}
    for worker in ("gw0", "gw1", "gw2", "gw3"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "4")
        picker = ports._Picker()
        seen[worker] = {picker.pick() for _ in range(200)}
    for a in seen:
        for b in seen:
            assert a == b or not seen[a] & seen[b], (a, b, seen[a] & seen[b])


def test_a_port_in_use_is_skipped() -> None:
    picker = ports._Picker()
    first = picker.pick()
    picker._next -= 1  # the walk would hand out `first` again...
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", first))
        busy.listen()
        assert picker.pick() != first  # ...but it is taken now
