"""Incremental planning equals the full planner over random report sequences (hypothesis).

Two planners are driven side by side over the same fleet and the same random sequence of
agent reports, repeated heartbeats, silences and clock jumps: ``compute_plan`` (every
rollout over every node, the reference) and ``replan`` given only its memo and the nodes
whose reports changed, as the served loop calls it. After every pass both plans must be
equal in everything the loop writes or acts on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan.incremental import Memo, replan
from reconciler.plan.inputs import PlanInputs
from reconciler.plan.observations import NodeReport
from reconciler.plan.rollout import Plan, compute_plan
from reconciler.plan.select import NodeFacts, inventory
from reconciler.spec import JSON, FleetSpec
from tests.helpers.fleet import (
    fleet_doc,
    fleet_files,
    nodes_named,
    release_doc,
    report_doc,
    spec_of,
    workload_report,
)

NODES = tuple(f"n{i}" for i in range(6))
TTL = 90.0
APPROVAL: dict[str, JSON] = {"kind": "merge", "ref": "a" * 40, "signers": []}
SPEC = spec_of(
    fleet_files(
        nodes_named(*NODES),
        [
            release_doc("app", "1.0.0", batch_size=2, soak=120, timeout=150, canary=["n3"]),
            release_doc(
                "side", "2.0.0", batch_size="50%", soak=0, timeout=60, on_failure="rollback"
            ),
        ],
    )
)
NODE_FACTS = inventory(SPEC)

# The same fleet with issue 10's and 16's rules in play: maxUnavailable backpressure and
# drop-off halts, spread notBefore, a node window that opens mid-sequence, a hold that
# ends mid-sequence, and an admitted Unlisted node (registered, no file).
START = 1_796_082_000.0  # Mon 2026-11-30 23:40 UTC: n2's hold ends at +20 min, n1's
# window opens at +30 min (a sequence spans up to ~80 min)
_controlled = fleet_files(
    nodes_named(*NODES),
    [
        release_doc(
            "app", "1.0.0", batch_size=2, soak=120, timeout=150, canary=["n3"]
        ),
        release_doc(
            "side", "2.0.0", batch_size="50%", soak=0, timeout=60, on_failure="rollback"
        ),
    ],
    {**fleet_doc(), "registration": {"unlisted": "allow"}},
)  # fmt: skip
_controlled["releases/app/1.0.0.yaml"]["rollout"]["maxUnavailable"] = 1
_controlled["releases/side/2.0.0.yaml"]["rollout"]["spreadSeconds"] = 30
_controlled["nodes/n1.yaml"]["windows"] = [
    {"days": ["Tue"], "start": "00:10", "duration": "1h", "timezone": "UTC"}
]
_controlled["nodes/n2.yaml"]["hold"] = {"until": "2026-12-01"}
CONTROLLED_SPEC = spec_of(_controlled)
EDGE = NodeFacts(
    "edge", "linux/arm64", roles=("inference",), labels={"port": "9100"},
    declared=False, scoped=True,
)  # fmt: skip
CONTROLLED_FACTS = inventory(CONTROLLED_SPEC, [EDGE])
WORLDS = {
    "plain": (SPEC, NODE_FACTS, 1_000.0),
    "controls": (CONTROLLED_SPEC, CONTROLLED_FACTS, START),
}

# what an agent does at one step: converge to its document, repeat its last report,
# fail or run unhealthy the first workload, or stay silent
ACTIONS = st.sampled_from(["converge", "repeat", "fail", "unhealthy", "silent"])
STEP = st.tuples(
    st.sampled_from([*NODES, "edge"]), ACTIONS, st.sampled_from([0, 1, 5, 20, 31, 61, 95, 121])
)


class Side:
    """One planner's world: its rollout states, desired documents, stale set, memo."""

    def __init__(self) -> None:
        self.rollouts: dict[str, Any] = {}
        self.desired: dict[str, Any] = {}
        self.stale: frozenset[str] = frozenset()
        self.memo: Memo | None = None

    def apply(self, plan: Plan) -> None:
        self.rollouts = {k: dict(v) for k, v in plan.rollouts.items()}
        self.desired = {k: dict(v) for k, v in plan.desired.items()}
        self.stale = plan.stale


def agent_report(node: str, action: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    workloads = (doc or {}).get("workloads", [])
    items = []
    for i, w in enumerate(workloads):
        name, version = str(w["name"]), str(w["version"])
        if i == 0 and action == "fail":
            items.append(workload_report(name, None, phase="Failed", desired=version, message="x"))
        elif i == 0 and action == "unhealthy":
            items.append(workload_report(name, version, phase="Unhealthy", healthy=False))
        else:
            items.append(workload_report(name, version))
    return report_doc(node, items)


def inputs(
    spec: FleetSpec,
    facts: Mapping[str, NodeFacts],
    side: Side,
    reports: Mapping[str, NodeReport],
    now: float,
    *,
    stale_before: frozenset[str] | None = None,
) -> PlanInputs:
    """The pass's inputs from what ``side`` stored (its stale set unless told otherwise)."""
    return PlanInputs(
        spec,
        facts,
        side.rollouts,
        reports,
        side.desired,
        now,
        TTL,
        revision="a" * 40,
        approval=APPROVAL,
        stale_before=side.stale if stale_before is None else stale_before,
    )


def same(a: Plan, b: Plan) -> None:
    assert dict(a.desired) == dict(b.desired)
    assert dict(a.rollouts) == dict(b.rollouts)
    assert a.changed_rollouts == b.changed_rollouts
    assert a.events == b.events
    assert a.next_wake_at == b.next_wake_at
    assert a.stale == b.stale


@pytest.mark.parametrize("world", sorted(WORLDS))
@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=40))
def test_incremental_equals_full_over_random_reports(
    world: str, steps: list[tuple[str, str, int]]
) -> None:
    spec, facts, now = WORLDS[world]
    full, inc = Side(), Side()
    reports: dict[str, NodeReport] = {}
    if world == "controls":  # every node heard from once: not all Stale, so the budget moves
        reports = {n: NodeReport.from_json(n, report_doc(n, []), now) for n in facts}
    texts: dict[str, list[Any]] = {}
    news: set[str] = set()
    previous: Plan | None = None

    def both() -> None:
        nonlocal previous
        want = compute_plan(inputs(spec, facts, full, reports, now))
        got = replan(
            inputs(spec, facts, inc, reports, now),
            memo=inc.memo,
            news=frozenset(news),
            previous=previous.desired if previous is not None else None,
        )
        same(got.plan, want)
        full.apply(want)
        inc.apply(got.plan)
        inc.memo, previous = got.memo, got.plan
        news.clear()

    both()
    for node, action, dt in steps:
        now += dt
        if action == "repeat" and node in reports:  # same content, newer lastSeen
            last = reports[node]
            reports[node] = NodeReport(node, now, last.workloads)
        elif action not in ("repeat", "silent"):
            doc = agent_report(node, action, inc.desired.get(node))
            if texts.get(node) != doc["workloads"]:
                news.add(node)  # what the report book calls news: the content changed
            texts[node] = doc["workloads"]
            reports[node] = NodeReport.from_json(node, doc, now)
        both()


def test_untouched_rollouts_are_not_stepped() -> None:
    """The point of it: a report from a node no rollout targets steps nothing."""
    now = 1_000.0
    side = Side()
    first = replan(inputs(SPEC, NODE_FACTS, Side(), {}, now))
    assert first.touched is None and first.stepped == {"app", "side"}
    side.apply(first.plan)
    again = replan(
        inputs(SPEC, NODE_FACTS, side, {}, now + 1, stale_before=frozenset()),
        memo=first.memo,
        news=frozenset({"elsewhere"}),
        previous=first.plan.desired,
    )
    assert again.stepped == frozenset() and again.touched == frozenset()
    assert dict(again.plan.desired) == dict(first.plan.desired)


# who leaves the inventory between two full passes -> what replan must give that node
LEAVERS = [
    ("unscoped", "edge-1"),  # re-registered with an unscoped credential: Unlisted again
    ("file-deleted", "n1"),  # its nodes/ file was deleted
]


@pytest.mark.parametrize(("how", "node"), LEAVERS)
def test_a_node_that_leaves_the_inventory_gets_an_empty_document(how: str, node: str) -> None:
    """compute_plan empties the stored document of a node that left the inventory; the
    served loop plans with replan, whose full pass must do the same (it rebuilt only the
    inventory's documents, so the node kept running what it had been given)."""
    files = fleet_files(
        nodes_named("n1", "n2"),
        [release_doc("app", "1.0.0", batch_size=5, soak=0)],
        {**fleet_doc(), "registration": {"unlisted": "allow"}},
    )
    edge = NodeFacts(
        "edge-1", "linux/arm64", roles=("inference",), labels={"port": "9001"},
        declared=False, scoped=True,
    )  # fmt: skip
    spec = spec_of(files)
    first = replan(inputs(spec, inventory(spec, [edge]), Side(), {}, 1_000.0))
    assert first.plan.desired[node]["workloads"] != []
    if how == "unscoped":
        registered = [replace(edge, scoped=False)]
    else:
        del files["nodes/n1.yaml"]
        spec, registered = spec_of(files), [edge]
    side = Side()
    side.apply(first.plan)
    again = inputs(spec, inventory(spec, registered), side, {}, 1_001.0, stale_before=frozenset())
    want = compute_plan(again)
    got = replan(again)
    assert want.desired[node]["workloads"] == []
    assert dict(got.plan.desired) == dict(want.desired)
