"""Benchmark: what one ``GET /metrics`` scrape costs the server for its fleet gauges.

    .venv/bin/python bench/metrics_scrape.py [--nodes 1000 8000]

A real SQLite store with N registered nodes, each with a desired document and a report,
loaded into the API's memory as ``fleetkeeper serve`` does (``ApiContext.load``). Side by
side, the two ways to get ``fleetkeeper_nodes`` and ``fleetkeeper_rollout_phase``:

- **document**: build the whole fleet-status document (``GET /v1/fleet``), then count it
  (what ``/metrics`` did before: ``gauges_of(fleet_status(ctx))``);
- **memory**: ``read_gauges(ctx)`` (reconciler/api/gauges.py), what it does now.

Printed per size: CPU milliseconds (median of 5, ``time.process_time``), the
``tracemalloc`` peak of one call (a separate call: tracing slows it), and the ratios.
Both must count the same; the script checks that they do.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_backends import desired_doc  # noqa: E402

from reconciler.api.admin import fleet_status  # noqa: E402
from reconciler.api.context import ApiContext, ApiSettings  # noqa: E402
from reconciler.api.gauges import read_gauges  # noqa: E402
from reconciler.store import open_store  # noqa: E402
from reconciler.store.base import AuditEvent, NodeClaim, NodeRecord, ReportRecord  # noqa: E402
from reconciler.views.fleet_status import FleetGauges, gauges_of  # noqa: E402

CHUNK = 1000
FACTS = {"platform": "linux/amd64", "roles": ["inference"], "runtimes": {"llama-cpp": True}}


def _report(node: str, at: float) -> ReportRecord:
    workload = {"name": "agent", "version": "1.0.0", "phase": "Healthy", "healthy": True}
    return ReportRecord(node, {"node": node, "generation": 1, "workloads": [workload]}, at)


def _fleet(path: Path, nodes: int) -> ApiContext:
    store = open_store(f"sqlite:///{path}")
    names = [f"node-{i:05d}" for i in range(nodes)]
    now = time.time()
    for start in range(0, nodes, CHUNK):
        chunk = names[start : start + CHUNK]
        store.claim_nodes(
            [
                NodeClaim(
                    NodeRecord(n, FACTS, f"{i:064x}", now),
                    None,
                    None,
                    AuditEvent(now, "registered", n),
                )
                for i, n in enumerate(chunk, start)
            ]
        )
        store.put_desired_many({n: desired_doc(n, "1.0.0") for n in chunk})
        store.put_reports([_report(n, now) for n in chunk])
    return ApiContext.load(store, ApiSettings(heartbeat_ttl=3600))


def _cpu_ms(fn: Callable[[], object]) -> float:
    runs = []
    for _ in range(5):
        started = time.process_time()
        fn()
        runs.append((time.process_time() - started) * 1000)
    return statistics.median(runs)


def _peak_mib(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1048576
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 8000])
    args = parser.parse_args()
    print(
        "| nodes | document: CPU, peak | memory: CPU, peak | CPU ratio | peak ratio |\n"
        "|---|---|---|---|---|"
    )
    for n in args.nodes:
        with tempfile.TemporaryDirectory() as tmp:
            ctx = _fleet(Path(tmp) / "state.db", n)

            def document(ctx: ApiContext = ctx) -> FleetGauges:
                return gauges_of(fleet_status(ctx))

            def memory(ctx: ApiContext = ctx) -> FleetGauges:
                return read_gauges(ctx)

            if document() != memory():
                raise SystemExit(f"{n} nodes: the two counts differ")
            doc_ms, mem_ms = _cpu_ms(document), _cpu_ms(memory)
            doc_peak, mem_peak = _peak_mib(document), _peak_mib(memory)
            print(
                f"| {n:,} | {doc_ms:.0f} ms, {doc_peak:.1f} MiB | {mem_ms:.1f} ms, "
                f"{mem_peak:.2f} MiB | {doc_ms / mem_ms:.0f}x | {doc_peak / mem_peak:.0f}x |",
                flush=True,
            )
            ctx.store.close()


if __name__ == "__main__":
    main()
