"""What one planning pass reads, as one value: ``compute_plan`` and ``replan`` both take it. Pure.

The loop builds it from the store and the report book; tests and benchmarks build it from
tables. Nothing here is read from a clock or a file: ``now`` is a field like any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.plan.controls import Control
from reconciler.plan.observations import NodeReport
from reconciler.plan.select import NodeFacts
from reconciler.spec import JSON, FleetSpec


@dataclass(frozen=True)
class PlanInputs:
    """The planner's whole input.

    ``nodes``: the inventory (``select.inventory``); ``rollouts``: stored rollout state per
    release; ``reports``: last report per node; ``desired``: the stored desired-state
    documents; ``ttl``: heartbeat TTL in seconds; ``revision`` and ``approval``: the applied
    revision, stamped into every document; ``stale_before``: nodes that were stale at the
    previous pass (so "went stale" is recorded once); ``controls``: the operator control
    records per workload name.
    """

    spec: FleetSpec
    nodes: Mapping[str, NodeFacts]
    rollouts: Mapping[str, Mapping[str, JSON]]
    reports: Mapping[str, NodeReport]
    desired: Mapping[str, Mapping[str, JSON]]
    now: float
    ttl: float
    revision: str | None
    approval: Mapping[str, JSON] | None
    stale_before: frozenset[str] = frozenset()
    controls: Mapping[str, Sequence[Control]] = field(default_factory=dict)
