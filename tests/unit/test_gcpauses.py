"""``GcPauses``: each collection of the cyclic collector lands in its generation's bucket."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.gcpauses import GcPauses


def _stepping_clock(step: float) -> Callable[[], float]:
    """Each reading ``step`` later than the last: every collection lasts ``step``."""
    ticks = itertools.count()
    return lambda: next(ticks) * step


@pytest.fixture
def collector_off() -> Iterator[None]:
    """Only the test's own gc.collect() calls: no automatic collection in between."""
    was = gc.isenabled()
    gc.disable()
    yield
    if was:
        gc.enable()


def _samples(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("fleetkeeper_gc_pause_seconds"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.usefixtures("collector_off")
def test_a_full_collection_is_counted_in_generation_2_with_its_duration() -> None:
    pauses = GcPauses(clock=_stepping_clock(0.003))
    registry = CollectorRegistry()
    registry.register(pauses)
    pauses.install()
    try:
        before = _samples(registry)
        a: list[object] = []
        a.append(a)  # a cycle for the collector to find
        del a
        gc.collect()
        gc.collect(0)
    finally:
        pauses.uninstall()
    after = _samples(registry)
    g2 = 'fleetkeeper_gc_pause_seconds_{}{{generation="2"{}}}'
    assert before[g2.format("count", "")] == 0
    assert after[g2.format("count", "")] == 1
    assert after[g2.format("sum", "")] == pytest.approx(0.003)
    assert after[g2.format("bucket", ',le="0.002"')] == 0  # 3 ms: above 2 ms ...
    assert after[g2.format("bucket", ',le="0.005"')] == 1  # ... and at most 5 ms
    assert after[g2.format("bucket", ',le="+Inf"')] == 1
    assert after['fleetkeeper_gc_pause_seconds_count{generation="0"}'] == 1
    assert after['fleetkeeper_gc_pause_seconds_count{generation="1"}'] == 0


@pytest.mark.usefixtures("collector_off")
def test_uninstalled_it_records_nothing_and_installing_twice_counts_once() -> None:
    pauses = GcPauses()
    registry = CollectorRegistry()
    registry.register(pauses)
    pauses.install()
    pauses.install()
    gc.collect()
    pauses.uninstall()
    gc.collect()
    samples = _samples(registry)
    assert samples['fleetkeeper_gc_pause_seconds_count{generation="2"}'] == 1
    assert 0 < samples['fleetkeeper_gc_pause_seconds_sum{generation="2"}'] < 5  # a real clock
