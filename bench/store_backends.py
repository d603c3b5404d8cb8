"""Benchmark: the store's costs on SQLite and on PostgreSQL, side by side.

    .venv/bin/python bench/store_backends.py [--nodes 10000] [--database postgresql://...]

Without ``--database`` a throwaway PostgreSQL is started (``tests/helpers/postgres.py``:
initdb/pg_ctl on 127.0.0.1, fsync off; pass a real server's URL for real disks). Both
backends run the same calls, the ones the server makes at scale:

- the batched writes of one pass or one flush over ``--nodes`` nodes: ``put_reports``
  (group commit of changed reports), ``touch_reports`` (the lastSeen flush),
  ``put_desired_many`` (a new revision for every node; again with nothing changed);
- one-at-a-time durable writes, p50/p99 of 300: ``append_audit``, ``put_report``,
  ``claim_node`` (a registration).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reconciler.store import Store, open_store  # noqa: E402
from reconciler.store.base import AuditEvent, NodeRecord, ReportRecord  # noqa: E402


def desired_doc(node: str, version: str) -> dict[str, object]:
    """A desired document of one process workload (also bench/metrics_scrape.py)."""
    rev = "a" * 40
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": node,
        "generation": 0,
        "revision": rev,
        "approval": {"kind": "merge", "ref": rev, "signers": []},
        "workloads": [{"name": "agent", "kind": "process", "version": version}],
    }


def _report(node: str, gen: int, at: float) -> ReportRecord:
    return ReportRecord(node, {"node": node, "generation": gen, "workloads": []}, at)


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def _each(n: int, fn: Callable[[int], object]) -> tuple[float, float]:
    ms = sorted(_timed(lambda i=i: fn(i)) for i in range(n))  # type: ignore[misc]
    return statistics.median(ms), ms[int(len(ms) * 0.99) - 1]


def measure(store: Store, nodes: int) -> dict[str, str]:
    names = [f"node-{i:05d}" for i in range(nodes)]
    out: dict[str, str] = {}
    out[f"put_reports x{nodes}"] = (
        f"{_timed(lambda: store.put_reports([_report(n, 1, 1.0) for n in names])):.0f} ms"
    )
    out[f"touch_reports x{nodes}"] = (
        f"{_timed(lambda: store.touch_reports(dict.fromkeys(names, 2.0))):.0f} ms"
    )
    docs = {n: desired_doc(n, "1.0.0") for n in names}
    out[f"put_desired_many x{nodes} (new)"] = (
        f"{_timed(lambda: store.put_desired_many(docs)):.0f} ms"
    )
    out[f"put_desired_many x{nodes} (same)"] = (
        f"{_timed(lambda: store.put_desired_many(docs)):.0f} ms"
    )
    for label, fn in (
        ("append_audit", lambda i: store.append_audit(AuditEvent(float(i), "report", str(i)))),
        ("put_report", lambda i: store.put_report(_report(names[i % nodes], i, float(i)))),
        (
            "claim_node",
            lambda i: store.claim_node(
                NodeRecord(f"new-{i}", {}, "h", 1.0), replaces=None, join_token=None
            ),
        ),
    ):
        p50, p99 = _each(300, fn)
        out[f"{label} (one, p50 / p99)"] = f"{p50:.2f} / {p99:.2f} ms"
    return out


@contextlib.contextmanager
def _postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.helpers.postgres import find_bindir, postgres_server

    bindir = find_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL binaries (initdb, pg_ctl): pass --database")
    with postgres_server(bindir) as server:
        yield server.create_database("bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=10000)
    ap.add_argument("--database", help="an empty PostgreSQL database (default: a throwaway one)")
    args = ap.parse_args()
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'state.db'}")
        results["sqlite"] = measure(store, args.nodes)
        store.close()
    with _postgres(args.database) as url:
        store = open_store(url)
        results["postgresql"] = measure(store, args.nodes)
        store.close()
    rows = list(results["sqlite"])
    width = max(len(r) for r in rows)
    print(f"| {'operation':<{width}} | sqlite | postgresql |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for r in rows:
        print(f"| {r:<{width}} | {results['sqlite'][r]} | {results['postgresql'][r]} |")


if __name__ == "__main__":
    main()
