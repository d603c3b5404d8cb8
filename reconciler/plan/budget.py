"""Backpressure and spread: how many targeted nodes may be down, and when a node may fetch.

Pure. ``maxUnavailable`` is a count, or a percentage of the targeted nodes rounded DOWN
(as Kubernetes rounds a Deployment's maxUnavailable) but never below 1, so that a fleet
of 3 with ``10%`` still moves one node at a time instead of never (rancher/rancher#30661).

``notBefore`` spreads a batch's artifact fetches over ``spreadSeconds``: each node's
delay is a hash of (node, rollout fingerprint), not a random draw, so every pass of the
planner computes the same document and a second pass writes nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from reconciler.plan.observations import NodeReport, is_stale, runs


def max_unavailable(value: int | str, targeted: int) -> int:
    """Nodes allowed down at once: ``2`` -> 2; ``"10%"`` of 1,000 -> 100, of 3 -> 1."""
    if isinstance(value, str):
        pct = float(value.rstrip("%"))
        return max(1, math.floor(pct * targeted / 100))
    return max(0, value)


def unavailable(
    nodes: Iterable[str], reports: Mapping[str, NodeReport], now: float, ttl: float
) -> list[tuple[str, str]]:
    """(node, why) for each of ``nodes`` that is Stale or reports an unhealthy workload."""
    out = []
    for n in nodes:
        r = reports.get(n)
        if is_stale(r, now, ttl):
            out.append((n, "Stale"))
        elif r is not None and not r.healthy():
            out.append((n, "Unhealthy"))
    return out


def dropped_off(
    converged: Iterable[str],
    converging: Iterable[str],
    name: str,
    version: str,
    reports: Mapping[str, NodeReport],
    now: float,
    ttl: float,
) -> list[tuple[str, str]]:
    """Nodes of the started batches that dropped off (Teleport's rule): a node that had
    soaked the target and no longer runs it healthy, or a node still converging whose
    reports stopped (``Stale``)."""
    out = []
    for n in converged:
        r = reports.get(n)
        if runs(r, name, version, now, ttl):
            continue
        if r is None or is_stale(r, now, ttl):
            out.append((n, "Stale"))
            continue
        w = r.workloads.get(name)
        running = w.version if w is not None else None
        out.append((n, "Unhealthy" if running == version else f"runs {running or 'nothing'}"))
    out.extend((n, "Stale") for n in converging if is_stale(reports.get(n), now, ttl))
    return out


def spread_delay(node: str, fingerprint: str, spread_seconds: int) -> int:
    """Seconds in [0, spread_seconds] that ``node`` waits before fetching this rollout."""
    if spread_seconds <= 0:
        return 0
    digest = hashlib.sha256(f"{node}\0{fingerprint}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (spread_seconds + 1)


def iso(t: float) -> str:
    """RFC 3339 UTC, whole seconds: ``2026-12-01T02:00:00Z``."""
    return datetime.fromtimestamp(int(t), UTC).isoformat().replace("+00:00", "Z")
