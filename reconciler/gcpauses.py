"""How long Python's cyclic garbage collector stops the server, per generation.

A collection holds the GIL from start to end: the event loop answers nothing meanwhile,
so each pause is added to every request in flight. ``GcPauses`` times each collection
from ``gc.callbacks`` and is a Prometheus collector for ``fleetkeeper_gc_pause_seconds
{generation}`` (a histogram).

The callback runs inside the collector, which may start at any allocation of any thread,
including one made while a lock is held (prometheus-client's own, say): so it only adds
to plain lists, takes no lock and allocates almost nothing; the histogram is built when
``/metrics`` is scraped. Collections never overlap (the interpreter runs one at a time),
so one start time is enough.
"""

from __future__ import annotations

import bisect
import gc
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

NAME = "fleetkeeper_gc_pause_seconds"
GENERATIONS = (0, 1, 2)
# From a young collection of a small heap (well under 1 ms) to a full one of a large
# fleet (about a second).
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


class GcPauses(Collector):
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
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

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(
            NAME,
            "Pauses of the cyclic garbage collector (the event loop stops meanwhile), "
            "by the oldest generation collected",
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
