"""Planning that grows with what changed: re-plan only the rollouts new input touches. Pure.

``compute_plan`` (``rollout``) steps every rollout over every targeted node. ``replan``
gives the same plan from the previous pass's ``Memo`` and the nodes whose reports are
news, stepping only the rollouts that

- a news node takes part in (is targeted by),
- have reached their wake time (a soak end, a timeout deadline),
- hold a node whose ``Stale`` state flipped (the heartbeat TTL clock),
- hold a node the rollout is waiting to hear from again (``awaiting``: its last report
  predates the moment it was given the target, so even a repeated heartbeat counts),
- or are new (no memo entry).

Every other rollout keeps its state, its wake time and what it gives each node, and only
the nodes of stepped rollouts get their desired document rebuilt (``touched``). Why this
equals a full pass: ``step_rollout`` reads the reports and ``now`` only through the
conditions above, so an untouched rollout would come out unchanged (the property test in
``tests/unit/test_incremental_plan.py`` checks this against ``compute_plan`` over random
report sequences).

``memo=None`` is a full pass. The caller passes ``memo=None`` whenever the spec, the
revision, the approval or the inventory changed, or when the stored rollout state and
desired documents may differ from what the memo's pass produced (a failed write, a
restart, a resync).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.plan.inputs import PlanInputs
from reconciler.plan.observations import NodeReport
from reconciler.plan.rollout import (
    Plan,
    PlanEvent,
    desired_document,
    held_nodes,
    hold_ends,
    stale_events,
    step_release,
    workload_entry,
)
from reconciler.plan.select import latest_versions, target_nodes, workload_document
from reconciler.plan.state import RolloutState, state_from_json, state_to_json
from reconciler.spec import JSON


@dataclass(frozen=True)
class RolloutMemo:
    """What one rollout's last step left behind, for the next incremental pass."""

    targets: Mapping[str, Mapping[str, JSON]]  # node -> its resolved target workload
    given: Mapping[str, Mapping[str, JSON]]  # node -> the workload this rollout gives it
    wake_at: float | None
    awaiting: Mapping[str, float]  # node -> a report received at or after this time counts
    state: RolloutState  # the state after the step, parsed (saves a parse next pass)
    json: Mapping[str, JSON]  # its store form, as handed to the caller in Plan.rollouts


@dataclass(frozen=True)
class Memo:
    rollouts: Mapping[str, RolloutMemo]
    stale: frozenset[str]


@dataclass(frozen=True)
class Replan:
    plan: Plan
    memo: Memo
    touched: frozenset[str] | None  # nodes whose documents were rebuilt (None: all)
    stepped: frozenset[str]  # rollouts stepped this pass

    @property
    def awaiting(self) -> frozenset[str]:
        """Nodes whose next report is news even when it repeats the last one."""
        return frozenset(n for r in self.memo.rollouts.values() for n in r.awaiting)


def _awaiting(
    state: RolloutState, live: Mapping[str, object], reports: Mapping[str, NodeReport]
) -> dict[str, float]:
    """Members of started, unfinished batches whose last report predates their start."""
    if state.phase == "Halted":
        return {}
    out: dict[str, float] = {}
    for batch in state.batches:
        if batch.started_at is None or batch.done_at is not None:
            continue
        for n in batch.nodes:
            p = state.nodes.get(n)
            r = reports.get(n)
            if n in live and p is not None and r is not None and r.received_at < p.started_at:
                out[n] = p.started_at
    return out


def _due(
    m: RolloutMemo, changed: frozenset[str], reports: Mapping[str, NodeReport], now: float
) -> bool:
    if m.wake_at is not None and m.wake_at <= now:
        return True
    if any(n in m.targets for n in changed):
        return True
    return any(
        (r := reports.get(n)) is not None and r.received_at >= t for n, t in m.awaiting.items()
    )


def replan(
    inputs: PlanInputs,
    *,
    memo: Memo | None = None,
    news: frozenset[str] = frozenset(),
    previous: Mapping[str, Mapping[str, JSON]] | None = None,
) -> Replan:
    """``compute_plan(inputs)``'s result, stepping only what changed when ``memo`` is given.

    ``news``: nodes whose report changed since the memo's pass; ``previous``: the memo
    pass's desired documents (``Plan.desired``), reused for nodes nothing touched. New
    ``inputs.controls`` records need a full pass: the caller drops the memo, as for a new
    inventory.
    """
    spec, nodes, rollouts, reports = inputs.spec, inputs.nodes, inputs.rollouts, inputs.reports
    desired, now, ttl, controls = inputs.desired, inputs.now, inputs.ttl, inputs.controls
    stale_before = inputs.stale_before
    # is_stale inlined, the cheap comparison first: it runs for every node in every pass
    # (8,000 nodes: 1.45 ms -> 0.48 ms)
    stale = frozenset(
        n for n, r in reports.items() if not now - r.received_at <= ttl and n in nodes
    )
    full = memo is None or previous is None
    changed = news | (stale ^ (memo.stale if memo is not None else stale_before))
    states: dict[str, Mapping[str, JSON]] = dict(rollouts)
    changed_rollouts: set[str] = set()
    events: list[PlanEvent] = []
    memos: dict[str, RolloutMemo] = {}
    stepped: set[str] = set()
    touched: set[str] = set()
    wakes: list[float] = []
    latest = latest_versions(spec)
    held = held_nodes(nodes, now)
    for name in sorted(latest):
        d = latest[name]
        old_memo = memo.rollouts.get(name) if memo is not None else None
        if not full and old_memo is not None and not _due(old_memo, changed, reports, now):
            memos[name] = old_memo
            if old_memo.wake_at is not None:
                wakes.append(old_memo.wake_at)
            continue
        stepped.add(name)
        if old_memo is not None and not full:
            targets = old_memo.targets  # same spec and inventory: same resolved documents
        else:
            targets = {}
            for n in target_nodes(d, nodes):
                doc = workload_document(d, nodes[n])
                if doc is not None:  # no artifact for the node's platform: it cannot run d
                    targets[n] = doc
        # held nodes (``hold:``) are not part of the rollout; they keep their entry
        on_hold = [n for n in targets if n in held]
        targeted = [n for n in targets if n not in held]  # target_nodes' order: canaries first
        old_json = rollouts.get(name)
        if old_memo is not None and old_json is old_memo.json:  # parsed last pass already
            old: RolloutState | None = old_memo.state
        else:
            old = state_from_json(old_json) if old_json is not None else None
        step, given = step_release(
            d,
            old,
            {n: targets[n] for n in targeted},
            on_hold,
            desired,
            nodes,
            reports,
            now,
            ttl,
            controls,
        )
        # an unchanged state keeps its stored JSON (serialising 10,000 nodes is the cost)
        if old is not None and old_json is not None and step.state == old:
            new_json: Mapping[str, JSON] = old_json
        else:
            new_json = state_to_json(step.state)
        if old_json != new_json:
            states[name] = new_json
            changed_rollouts.add(name)
        events.extend(step.events)
        for n in on_hold:
            if (kept := workload_entry(desired.get(n), name)) is not None:
                given[n] = kept
        if old_memo is not None:
            was = old_memo.given
            touched.update(
                n
                for n in was.keys() | given.keys()
                if (a := was.get(n)) is not (b := given.get(n)) and a != b
            )
        else:
            touched.update(given)
        if step.wake_at is not None:
            wakes.append(step.wake_at)
        # a halted rollout is stepped again only for news: compute_plan gives it no wake
        # after the pass that halted it (that pass still names the deadlines it saw)
        later = None if step.state.phase == "Halted" else step.wake_at
        ends = hold_ends(on_hold, nodes, now)  # a hold ending is a wake for this rollout
        if ends:
            later = min([*ends, *([later] if later is not None else [])])
            wakes.extend(ends)
        memos[name] = RolloutMemo(
            targets, given, later, _awaiting(step.state, targets, reports), step.state, new_json
        )

    if full or previous is None:
        # as compute_plan: a stored document of a node that left the inventory (its file
        # deleted, or Unlisted again) is rebuilt empty, so what it was given stops
        rebuild: frozenset[str] | set[str] = frozenset(nodes) | desired.keys()
        out: dict[str, Mapping[str, JSON]] = {}
    else:
        rebuild = touched & nodes.keys()
        out = dict(previous)
    for n in sorted(rebuild):
        items = [memos[r].given[n] for r in sorted(memos) if n in memos[r].given]
        out[n] = desired_document(n, items, inputs.revision, inputs.approval, desired.get(n))
    if full:
        out = dict(sorted(out.items()))
    events.extend(stale_events(stale, stale_before, reports, now))
    plan = Plan(
        desired=out,
        rollouts=states,
        changed_rollouts=frozenset(changed_rollouts),
        events=tuple(events),
        next_wake_at=min(wakes) if wakes else None,
        stale=stale,
    )
    return Replan(
        plan, Memo(memos, stale), None if full else frozenset(rebuild), frozenset(stepped)
    )
