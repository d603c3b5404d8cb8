"""``GcPauses``: each collection lands in its generation's bucket; ``keep_collections_short``:
survivors leave the young generations on time, and frozen cyclic garbage is still freed."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from reconciler.config import parse_config
from reconciler.errors import ConfigError
from reconciler.garbage import GcPauses, keep_collections_short


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


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _run_policy(freeze: float, full: float, steps: Callable[[], Iterator[float]]) -> None:
    """``keep_collections_short`` on a real event loop while ``steps`` acts and sleeps."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(keep_collections_short(stop, lambda: True, freeze, full))
        for pause in steps():
            await asyncio.sleep(pause)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


@pytest.fixture
def thawed() -> Iterator[None]:
    """The test process's permanent generation is emptied again afterwards."""
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("collector_off", "thawed")
def test_survivors_are_frozen_every_interval_and_frozen_cycles_freed_by_the_full_one() -> None:
    seen: dict[str, object] = {}

    def steps() -> Iterator[float]:
        yield 0.05  # the start-up collection and freeze ran
        seen["after_start"] = gc.get_freeze_count()
        cycle = _Cycle()
        seen["ref"] = weakref.ref(cycle)
        survivors = [[i] for i in range(1000)]  # new objects that live on
        yield 0.3  # several freeze intervals: they are frozen now, walked by no collection
        seen["frozen"] = gc.get_freeze_count()
        seen["young_holds_it"] = any(o is survivors for o in gc.get_objects())
        del cycle  # garbage now, but frozen: reference counting cannot free a cycle
        gc.collect()
        seen["alive_after_young_collect"] = seen["ref"]() is not None  # type: ignore[operator]
        yield 1.0  # the full collection (every 0.8 s here) unfreezes and finds it
        seen["alive_after_full"] = seen["ref"]() is not None  # type: ignore[operator]
        del survivors

    _run_policy(freeze=0.1, full=0.8, steps=steps)
    assert seen["frozen"] > seen["after_start"] + 1000  # type: ignore[operator]
    assert seen["young_holds_it"] is False  # gc.get_objects() lists only the generations
    assert seen["alive_after_young_collect"] is True
    assert seen["alive_after_full"] is False


@pytest.mark.usefixtures("collector_off", "thawed")
def test_freeze_seconds_0_freezes_only_at_start() -> None:
    seen: dict[str, int] = {}

    def steps() -> Iterator[float]:
        yield 0.05
        seen["after_start"] = gc.get_freeze_count()
        survivors = [[i] for i in range(1000)]
        yield 0.3
        seen["later"] = gc.get_freeze_count()
        del survivors

    _run_policy(freeze=0, full=600, steps=steps)
    assert seen["later"] <= seen["after_start"]  # some frozen ones died: freed all the same


def test_gc_freeze_seconds_is_a_config_key_with_a_default_and_a_floor(tmp_path: Path) -> None:
    assert parse_config({"repo": "/x"}, base=tmp_path, env={}).gc_freeze_seconds == 2.0
    cfg = parse_config({"repo": "/x", "gcFreezeSeconds": 0}, base=tmp_path, env={})
    assert cfg.gc_freeze_seconds == 0.0
    with pytest.raises(ConfigError, match="gcFreezeSeconds"):
        parse_config({"repo": "/x", "gcFreezeSeconds": -1}, base=tmp_path, env={})
