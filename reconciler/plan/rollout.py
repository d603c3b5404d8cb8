"""The rollout planner: spec + inventory + rollout state + reports + now -> plan. Pure.

Per release (or model), independently of every other one:

- the targeted nodes form the rollout; canaries go first, each alone, then batches of
  ``batchSize`` (see ``batches``);
- a started batch is done when every node in it reports the target version running,
  healthy, continuously for ``soakSeconds``; only then does the next batch start;
- a node that reports ``Failed`` for the target, or has not converged within
  ``timeoutSeconds`` of being given it (a ``Stale`` node included), halts the rollout;
  with ``onFailure: rollback`` the updated nodes get their previous document back. A
  halted rollout touches no further node until a new fingerprint (new version, changed
  file) starts a new rollout;
- nodes not in a started batch keep their previous document (or none).

Nothing here reads a clock or does I/O; ``now`` and every input are arguments, and the
same inputs always give the same plan (the loop relies on this to write nothing when
nothing changed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from reconciler.plan.batches import make_batches
from reconciler.plan.observations import NodeReport, failed, is_stale, runs
from reconciler.plan.select import NodeFacts, latest_versions, target_nodes, workload_document
from reconciler.plan.state import (
    HISTORY_LIMIT,
    Batch,
    Halt,
    NodeProgress,
    PastRollout,
    Phase,
    RolloutState,
    fingerprint,
    state_from_json,
    state_to_json,
)
from reconciler.spec import JSON, Deployable, FleetSpec

API_VERSION = "fleetkeeper/v1"


@dataclass(frozen=True)
class PlanEvent:
    """An audit record the loop appends: a rollout step, a halt, a node going stale."""

    kind: str  # rollout-started | batch-started | batch-done | halted | rolled-back |
    #            succeeded | superseded | stale | fresh
    message: str
    release: str | None = None
    node: str | None = None
    details: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One rollout after this pass, what happened, and when it needs another look."""

    state: RolloutState
    events: tuple[PlanEvent, ...]
    wake_at: float | None


@dataclass(frozen=True)
class Plan:
    desired: Mapping[str, Mapping[str, JSON]]  # node -> desired-state document (no generation)
    rollouts: Mapping[str, Mapping[str, JSON]]  # release -> rollout state JSON (all of them)
    changed_rollouts: frozenset[str]  # releases whose state differs from the input
    events: tuple[PlanEvent, ...]
    next_wake_at: float | None  # earliest soak end or timeout deadline after ``now``
    stale: frozenset[str]  # nodes whose last report is older than the heartbeat TTL


def _label(d: Deployable | RolloutState) -> str:
    return f"{d.name} {d.version}"


def _start(
    d: Deployable,
    old: RolloutState | None,
    targeted: Sequence[str],
    current: Mapping[str, Mapping[str, JSON] | None],
    now: float,
) -> tuple[RolloutState, list[PlanEvent]]:
    """A new rollout of ``d``; the rollout it replaces goes to history."""
    events: list[PlanEvent] = []
    history: tuple[PastRollout, ...] = ()
    if old is not None:
        past_phase: Phase = "Succeeded" if old.phase == "Succeeded" else "Superseded"
        reason = None if past_phase == "Succeeded" else f"superseded by {_label(d)}"
        past = PastRollout(old.version, old.fingerprint, past_phase, reason, now)
        history = ((past,) + old.history)[:HISTORY_LIMIT]
        if past_phase == "Superseded":
            events.append(
                PlanEvent(
                    "superseded",
                    f"rollout of {_label(old)} ({old.phase}) superseded by {d.version}",
                    release=d.name,
                    details={"version": old.version, "by": d.version, "was": old.phase},
                )
            )
    batches = tuple(Batch(nodes=b) for b in make_batches(targeted, d.rollout))
    state = RolloutState(
        name=d.name,
        kind=d.kind,
        version=d.version,
        fingerprint=fingerprint(d),
        started_at=now,
        batches=batches,
        phase="Pending",
        soak_seconds=d.rollout.soak_seconds,
        timeout_seconds=d.rollout.timeout_seconds,
        on_failure=d.rollout.on_failure,
        previous={n: current.get(n) for n in targeted},
        history=history,
    )
    events.append(
        PlanEvent(
            "rollout-started",
            f"rollout of {_label(d)} to {len(targeted)} node(s) in {len(batches)} batch(es)",
            release=d.name,
            details={"version": d.version, "batches": [list(b.nodes) for b in batches]},
        )
    )
    return state, events


def _join(
    state: RolloutState,
    d: Deployable,
    targeted: Sequence[str],
    current: Mapping[str, Mapping[str, JSON] | None],
) -> RolloutState:
    """Nodes targeted after the rollout began (a node registered) go in new last batches."""
    known = {n for b in state.batches for n in b.nodes}
    joined = [n for n in targeted if n not in known]
    if not joined:
        return state
    extra = tuple(Batch(nodes=b) for b in make_batches(joined, d.rollout, total=len(targeted)))
    previous = dict(state.previous)
    previous.update({n: current.get(n) for n in joined})
    return replace(state, batches=state.batches + extra, previous=previous)


def step_rollout(
    d: Deployable,
    old: RolloutState | None,
    targeted: Sequence[str],
    current: Mapping[str, Mapping[str, JSON] | None],
    reports: Mapping[str, NodeReport],
    now: float,
    ttl: float,
) -> Step:
    """Advance the rollout of ``d`` as far as the reports allow at ``now``.

    ``targeted``: nodes that can run ``d``, canaries first; ``current``: each node's
    workload document for ``d.name`` as it is desired now (None: none).
    """
    events: list[PlanEvent] = []
    if old is None or old.fingerprint != fingerprint(d):
        state, events = _start(d, old, targeted, current, now)
    else:
        state = old
    state = _join(state, d, targeted, current)
    if state.phase == "Halted":
        return Step(state, tuple(events), None)

    live = set(targeted)
    batches = list(state.batches)
    progress = dict(state.nodes)
    phase, halt, wakes = _advance_batches(d, batches, progress, live, reports, now, ttl, events)
    rolled_back: tuple[str, ...] = ()
    if halt is not None:
        rolled_back = _halted(d, halt, batches, live, events)
    elif phase == "Succeeded" and state.phase != "Succeeded":
        events.append(PlanEvent("succeeded", f"{_label(d)} rolled out", release=d.name))
    new = replace(
        state,
        batches=tuple(batches),
        nodes=progress,
        phase=phase,
        halt=halt,
        rolled_back=rolled_back,
    )
    future = [w for w in wakes if w > now]
    return Step(new, tuple(events), min(future) if future else None)


def _advance_batches(
    d: Deployable,
    batches: list[Batch],
    progress: dict[str, NodeProgress],
    live: set[str],
    reports: Mapping[str, NodeReport],
    now: float,
    ttl: float,
    events: list[PlanEvent],
) -> tuple[Phase, Halt | None, list[float]]:
    """Start, judge and finish batches in order (updating ``batches``, ``progress`` and
    ``events`` in place) until one is still running; (phase, halt, wake times)."""
    wakes: list[float] = []
    for i, batch in enumerate(batches):
        if batch.done_at is not None:
            continue
        members = [n for n in batch.nodes if n in live]
        if batch.started_at is None:
            batch = batches[i] = replace(batch, started_at=now)
            for n in members:
                progress[n] = NodeProgress(started_at=now)
            events.append(_batch_event("started", d, i, len(batches), members))
        all_running = all_soaked = True
        for n in members:
            given = progress.get(n) or NodeProgress(started_at=batch.started_at or now)
            verdict = _judge_node(d, n, given, reports.get(n), now, ttl)
            if verdict.halt is not None:
                return "Halted", verdict.halt, wakes
            all_running &= verdict.running
            all_soaked &= verdict.soaked
            if verdict.wake is not None:
                wakes.append(verdict.wake)
            progress[n] = verdict.progress
        if not all_soaked:
            return ("Soaking" if all_running else "Progressing"), None, wakes
        batches[i] = replace(batch, done_at=now)
        events.append(_batch_event("done", d, i, len(batches), members))
    return ("Succeeded" if live else "Pending"), None, wakes


@dataclass(frozen=True)
class _Verdict:
    """One node of a running batch at ``now``."""

    progress: NodeProgress
    halt: Halt | None = None
    running: bool = False  # the target, healthy, in a report since it was given
    soaked: bool = False  # ... for at least the soak time
    wake: float | None = None  # when to look again (soak end or timeout)


def _judge_node(
    d: Deployable,
    n: str,
    p: NodeProgress,
    report: NodeReport | None,
    now: float,
    ttl: float,
) -> _Verdict:
    # only reports received after the node was given the target count
    since_given = report is not None and report.received_at >= p.started_at
    bad = failed(report, d.name, d.version) if since_given else None
    if bad is not None:
        why = f": {bad.message}" if bad.message else ""
        return _Verdict(p, halt=Halt(n, f"node {n} reported Failed for {_label(d)}{why}", now))
    if since_given and report is not None and runs(report, d.name, d.version, now, ttl):
        since = p.healthy_since if p.healthy_since is not None else report.received_at
        p = replace(p, healthy_since=since)
        soak_end = since + d.rollout.soak_seconds
        if now < soak_end:
            return _Verdict(p, running=True, wake=soak_end)
        return _Verdict(p, running=True, soaked=True)
    p = replace(p, healthy_since=None)
    deadline = p.started_at + d.rollout.timeout_seconds
    if now >= deadline:
        return _Verdict(p, halt=Halt(n, _timeout_reason(n, d, report, now, ttl), now))
    return _Verdict(p, wake=deadline)


def _batch_event(word: str, d: Deployable, i: int, of: int, members: list[str]) -> PlanEvent:
    return PlanEvent(
        f"batch-{word}",
        f"{_label(d)}: batch {i + 1}/{of} {word}: {', '.join(members)}",
        release=d.name,
        details={"batch": i + 1, "of": of, "nodes": list(members)},
    )


def _halted(
    d: Deployable, halt: Halt, batches: list[Batch], live: set[str], events: list[PlanEvent]
) -> tuple[str, ...]:
    """The halt's events; with ``onFailure: rollback`` the nodes given the previous version."""
    events.append(
        PlanEvent("halted", f"{_label(d)} halted: {halt.reason}", release=d.name, node=halt.node)
    )
    if d.rollout.on_failure != "rollback":
        return ()
    started = [n for b in batches if b.started_at is not None for n in b.nodes]
    rolled_back = tuple(n for n in started if n in live)
    events.append(
        PlanEvent(
            "rolled-back",
            f"{_label(d)}: previous version given back to {', '.join(rolled_back)}",
            release=d.name,
            details={"nodes": list(rolled_back)},
        )
    )
    return rolled_back


def _timeout_reason(
    node: str, d: Deployable, report: NodeReport | None, now: float, ttl: float
) -> str:
    limit = d.rollout.timeout_seconds
    if report is None:
        return f"node {node} never reported and did not converge to {_label(d)} within {limit}s"
    if is_stale(report, now, ttl):
        age = int(now - report.received_at)
        return (
            f"node {node} is Stale (last report {age}s ago) and did not converge to "
            f"{_label(d)} within {limit}s"
        )
    w = report.workloads.get(d.name)
    seen = "not running it" if w is None else f"{w.version or 'nothing'} {w.phase}"
    msg = f" ({w.message})" if w is not None and w.message else ""
    return f"node {node} did not converge to {_label(d)} within {limit}s: {seen}{msg}"


def node_workload(
    state: RolloutState,
    node: str,
    target: Mapping[str, JSON],
    started: frozenset[str] | None = None,
) -> Mapping[str, JSON] | None:
    """What ``node`` is to run for this rollout's workload: target, previous, or nothing.

    ``started``: ``state.started_nodes()`` when the caller already has it (large fleets).
    """
    if node in state.rolled_back:
        return state.previous.get(node)
    if node in (started if started is not None else frozenset(state.started_nodes())):
        return target
    return state.previous.get(node)


def workload_entry(doc: Mapping[str, JSON] | None, name: str) -> Mapping[str, JSON] | None:
    """The workload called ``name`` in a desired-state document."""
    items = doc.get("workloads") if doc is not None else None
    for w in items if isinstance(items, list) else []:
        if isinstance(w, dict) and w.get("name") == name:
            return w
    return None


def desired_document(
    node: str,
    workloads: Sequence[Mapping[str, JSON]],
    revision: str | None,
    approval: Mapping[str, JSON] | None,
    existing: Mapping[str, JSON] | None,
) -> dict[str, JSON]:
    """A node's desired-state document, minus the generation the store assigns.

    When the workloads equal the stored ones, the stored revision and approval are kept:
    a new approved commit that changes nothing for this node does not touch it.
    """
    items: list[JSON] = [dict(w) for w in sorted(workloads, key=lambda w: str(w.get("name")))]
    if existing is not None and existing.get("workloads") == items:
        revision_v = existing.get("revision")
        approval_v = existing.get("approval")
    else:
        revision_v = revision
        approval_v = dict(approval) if approval is not None else None
    return {
        "apiVersion": API_VERSION,
        "kind": "DesiredState",
        "node": node,
        "revision": revision_v,
        "approval": approval_v,
        "workloads": items,
    }


def compute_plan(
    spec: FleetSpec,
    nodes: Mapping[str, NodeFacts],
    rollouts: Mapping[str, Mapping[str, JSON]],
    reports: Mapping[str, NodeReport],
    desired: Mapping[str, Mapping[str, JSON]],
    now: float,
    ttl: float,
    *,
    revision: str | None,
    approval: Mapping[str, JSON] | None,
    stale_before: frozenset[str] = frozenset(),
) -> Plan:
    """Desired state per node and each rollout's next step, from the inputs alone.

    ``nodes``: the inventory (``select.inventory``); ``rollouts``: stored rollout state per
    release; ``reports``: last report per node; ``desired``: the stored desired-state
    documents; ``ttl``: heartbeat TTL in seconds; ``stale_before``: nodes that were stale
    at the previous pass (so "went stale" is recorded once).

    Long because it is the planner's whole contract in order (stale nodes, each rollout
    stepped, desired documents per node, the next wake); each part is one call.
    """
    # A node with a stored document that left the inventory (its file was deleted, or it
    # is unlisted) gets an empty one: what it was given before must not stay desired.
    per_node: dict[str, list[Mapping[str, JSON]]] = {n: [] for n in [*nodes, *desired]}
    states: dict[str, Mapping[str, JSON]] = dict(rollouts)
    changed: set[str] = set()
    events: list[PlanEvent] = []
    wakes: list[float] = []
    latest = latest_versions(spec)
    for name in sorted(latest):
        d = latest[name]
        targets: dict[str, Mapping[str, JSON]] = {}
        for n in target_nodes(d, nodes):
            doc = workload_document(d, nodes[n])
            if doc is not None:  # no artifact for the node's platform: it cannot run d
                targets[n] = doc
        targeted = list(targets)  # keeps target_nodes' order: canaries first
        current = {n: workload_entry(desired.get(n), name) for n in targeted}
        old_json = rollouts.get(name)
        old = state_from_json(old_json) if old_json is not None else None
        step = step_rollout(d, old, targeted, current, reports, now, ttl)
        new_json = state_to_json(step.state)
        if old_json != new_json:
            states[name] = new_json
            changed.add(name)
        events.extend(step.events)
        if step.wake_at is not None:
            wakes.append(step.wake_at)
        started = frozenset(step.state.started_nodes())
        for n in targeted:
            w = node_workload(step.state, n, targets[n], started)
            if w is not None:
                per_node[n].append(w)

    out = {
        n: desired_document(n, per_node[n], revision, approval, desired.get(n))
        for n in sorted(per_node)
    }
    stale = frozenset(n for n, r in reports.items() if n in nodes and is_stale(r, now, ttl))
    for n in sorted(stale - stale_before):
        age = int(now - reports[n].received_at)
        events.append(PlanEvent("stale", f"node {n} went Stale: last report {age}s ago", node=n))
    for n in sorted((stale_before - stale) & set(reports)):
        events.append(PlanEvent("fresh", f"node {n} reports again", node=n))
    return Plan(
        desired=out,
        rollouts=states,
        changed_rollouts=frozenset(changed),
        events=tuple(events),
        next_wake_at=min(wakes) if wakes else None,
        stale=frozenset(stale),
    )
