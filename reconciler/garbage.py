"""The server's cyclic garbage collector: its pauses measured, and kept short.

A collection holds the GIL from start to end: the event loop answers nothing meanwhile,
so each pause is added to every request in flight.

``GcPauses`` times each collection from ``gc.callbacks`` and is a Prometheus collector
for ``fleetkeeper_gc_pause_seconds{generation}`` (a histogram) and
``fleetkeeper_gc_frozen_objects``. A pause is the collecting thread's CPU time
(``time.thread_time``), not wall time: on a busy machine a collection's wall time also
holds whatever other processes ran meanwhile (measured at 4,000 agents, load average
5-9: 5-50 ms of wall for 0.2-10 ms of CPU), and the callback itself may hand the GIL to
another thread before it reads the clock. The callback runs inside the collector, which
may start at any allocation of any thread, including one made while a lock is held
(prometheus-client's own, say): so it only adds to plain lists and takes no lock; the
histogram is built when ``/metrics`` is scraped. Collections never overlap (the
interpreter runs one at a time), so one start time is enough.

``keep_collections_short`` is the policy (docs/server.md, "Garbage collection"). Why the
young collections grew with the fleet: the generation-0 counter is allocations minus
deallocations of *any* generation, so a server that keeps replacing old objects with new
ones (each long-poll and report replaces its predecessor's request state) hardly moves it,
while every new survivor stays in the young generations until a collection walks them
all: at 4,000 agents 50-100 ms of CPU for one young collection. ``gc.freeze()`` every
``gcFreezeSeconds`` moves the survivors to the permanent generation, which no collection
walks (it is a list splice, O(1)). The price: cyclic garbage whose objects were alive
at a freeze waits for the next full collection, which unfreezes everything, collects and
freezes again every ``FULL_GC_SECONDS``; plain garbage is still freed at once by
reference counting.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

NAME = "fleetkeeper_gc_pause_seconds"
GENERATIONS = (0, 1, 2)
# From a young collection of a small heap (well under 1 ms) to a full one of a large
# fleet (about a second).
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)
FULL_GC_SECONDS = 600.0  # the oldest generation is collected this often
READY_POLL_SECONDS = 0.5


class GcPauses(Collector):
    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self._clock = clock
        self._started = 0.0
        # per generation: one count per bucket (the last is +Inf, not cumulative), sum
        self._counts = [[0] * (len(BUCKETS) + 1) for _ in GENERATIONS]
        self._sums = [0.0 for _ in GENERATIONS]

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self._clock()
            return
        pause = self._clock() - self._started
        generation = info["generation"]
        self._counts[generation][bisect.bisect_left(BUCKETS, pause)] += 1
        self._sums[generation] += pause

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            NAME,
            "CPU time of each pause of the cyclic garbage collector (the event loop stops "
            "meanwhile), by the oldest generation collected",
            labels=["generation"],
        )
        for generation in GENERATIONS:
            counts = list(self._counts[generation])  # a copy: the callback may add meanwhile
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, BUCKETS), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family
        yield GaugeMetricFamily(
            "fleetkeeper_gc_frozen_objects",
            "Objects in the permanent generation (gc.freeze): no collection walks them",
            value=gc.get_freeze_count(),
        )


async def keep_collections_short(
    stop: asyncio.Event,
    ready: Callable[[], bool],
    freeze_seconds: float,
    full_seconds: float = FULL_GC_SECONDS,
) -> None:
    """Until ``stop``: once ``ready`` (the first pass done), collect everything and freeze
    what start-up built; then freeze the survivors every ``freeze_seconds`` (0: not
    in between), and every ``full_seconds`` unfreeze, collect everything, freeze again.

    The automatic full collection is off (``run`` in reconciler/service.py): this is the
    only one."""
    while not ready() and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), READY_POLL_SECONDS)
    if stop.is_set():
        return
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    next_full = loop.time() + full_seconds
    while True:
        now = loop.time()
        due = next_full if freeze_seconds <= 0 else min(next_full, now + freeze_seconds)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, due - now))
        if stop.is_set():
            return
        if loop.time() >= next_full:
            next_full = loop.time() + full_seconds
            started = time.monotonic()
            gc.unfreeze()  # frozen cycles that died since are found now, not never
            found = gc.collect()
            gc.freeze()
            log.debug("full gc: %d unreachable, %.2fs", found, time.monotonic() - started)
        else:
            gc.freeze()
