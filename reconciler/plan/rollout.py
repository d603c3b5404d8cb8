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

Rollout controls (``windows``, ``budget``; see docs/rollouts.md):

- a node of a started batch is *given* the target only while its maintenance window is
  open; until then the rollout waits for the window (``state.wait``) and wakes at its
  opening. Its timeout counts from when it was given the target (plus its spread delay);
- with ``maxUnavailable``, no new batch starts while more targeted nodes than that are
  Stale or Unhealthy, and the rollout halts when more nodes of the started batches than
  that drop off, naming them;
- with ``spreadSeconds``, a given node's workload entry carries ``notBefore``: when it was
  given the target plus a delay hashed from (node, rollout), so fetches spread out;
- a held node (``hold:`` in its node file) is not part of the rollout while held: it keeps
  the entry it has, never blocks a batch, and rejoins in a new last batch when released;
- operator controls (``controls``: pause, resume, retry, promote, skip-node) are store
  records passed in and folded into the state first; a paused rollout gives the target
  to no further node (in-flight nodes are still judged), a promoted batch needs no soak,
  a skipped node is left out, a retry lifts a halt.

Nothing here reads a clock or does I/O; ``now`` and every input are arguments, and the
same inputs always give the same plan (the loop relies on this to write nothing when
nothing changed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from reconciler.plan import windows as win
from reconciler.plan.batches import make_batches
from reconciler.plan.budget import dropped_off, iso, max_unavailable, spread_delay, unavailable
from reconciler.plan.controls import Control, apply_controls
from reconciler.plan.inputs import PlanInputs
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
    Wait,
    fingerprint,
    state_from_json,
    state_to_json,
)
from reconciler.spec import JSON, Deployable, Windows

API_VERSION = "fleetkeeper/v1"


@dataclass(frozen=True)
class PlanEvent:
    """An audit record the loop appends: a rollout step, a halt, a node going stale."""

    kind: str  # rollout-started | batch-started | batch-done | halted | rolled-back |
    #            succeeded | superseded | stale | fresh | control-applied
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
    digest = d.config_digest if isinstance(d, RolloutState) else d.target_digest
    return f"{d.name} {d.version}" + (f" (config {digest})" if digest else "")


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
        spread_seconds=d.rollout.spread_seconds,
        previous={n: current.get(n) for n in targeted},
        history=history,
        config_digest=d.target_digest,
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
    """Nodes targeted after the rollout began (a node registered, or was released from a
    hold its batch finished without) go in new last batches."""
    known = {n for b in state.batches for n in b.nodes}
    missed = {
        n
        for b in state.batches
        if b.done_at is not None
        for n in b.nodes
        if n not in state.nodes and n in targeted
    }
    joined = [n for n in targeted if n not in known or n in missed]
    if not joined:
        return state
    kept = tuple(
        replace(b, nodes=tuple(n for n in b.nodes if n not in missed)) if missed else b
        for b in state.batches
    )
    extra = tuple(Batch(nodes=b) for b in make_batches(joined, d.rollout, total=len(targeted)))
    previous = dict(state.previous)
    previous.update({n: current.get(n) for n in joined if n not in missed})
    return replace(state, batches=kept + extra, previous=previous)


def step_rollout(
    d: Deployable,
    old: RolloutState | None,
    targeted: Sequence[str],
    current: Mapping[str, Mapping[str, JSON] | None],
    reports: Mapping[str, NodeReport],
    now: float,
    ttl: float,
    *,
    windows: Mapping[str, Windows] | None = None,
    held: Sequence[str] = (),
    controls: Sequence[Control] = (),
) -> Step:
    """Advance the rollout of ``d`` as far as the reports allow at ``now``.

    ``targeted``: nodes that can run ``d``, canaries first, held nodes excluded;
    ``current``: each node's workload document for ``d.name`` as it is desired now (None:
    none); ``windows``: the maintenance windows that gate each node (absent: always open);
    ``held``: targeted nodes on hold (only recorded, for status); ``controls``: every
    operator control record of ``d.name`` (``plan.controls``).
    """
    events: list[PlanEvent] = []
    if old is None or old.fingerprint != fingerprint(d):
        state, events = _start(d, old, targeted, current, now)
    else:
        state = old
    state = _join(state, d, targeted, current)
    if tuple(sorted(held)) != state.held:
        state = replace(state, held=tuple(sorted(held)))
    if controls or state.paused is not None:
        applied = apply_controls(state, controls, reports)
        state = applied.state
        events.extend(_control_event(d, c, what) for c, what in applied.done)
    if state.phase == "Halted":
        return Step(state, tuple(events), None)

    live = set(targeted) - set(state.skipped)
    batches = list(state.batches)
    progress = dict(state.nodes)
    budget = (
        max_unavailable(d.rollout.max_unavailable, len(live))
        if d.rollout.max_unavailable is not None
        else None
    )
    gate = _Gate(windows or {}, budget, state.fingerprint, state.paused is not None)
    halt = _drop_off(d, state, live, budget, reports, now, ttl)
    phase: Phase = "Halted"
    wait: Wait | None = None
    wakes: list[float] = []
    if halt is None:
        phase, halt, wakes, wait = _advance_batches(
            d, gate, batches, progress, live, reports, now, ttl, events
        )
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
        wait=None if halt is not None else wait,
    )
    future = [w for w in wakes if w > now]
    return Step(new, tuple(events), min(future) if future else None)


@dataclass(frozen=True)
class _Gate:
    """The rollout controls of one rollout: per-node windows, the unavailability budget."""

    windows: Mapping[str, Windows]
    budget: int | None  # maxUnavailable resolved to a count; None: no backpressure
    fingerprint: str
    paused: bool = False  # ``rollout pause``: no node is given the target


def _drop_off(
    d: Deployable,
    state: RolloutState,
    live: set[str],
    budget: int | None,
    reports: Mapping[str, NodeReport],
    now: float,
    ttl: float,
) -> Halt | None:
    """Teleport's rule: halt when more nodes of the started batches than ``budget`` dropped off."""
    if budget is None or state.phase == "Succeeded":
        return None
    converged: list[str] = []
    converging: list[str] = []
    for b in state.batches:
        given = [n for n in b.nodes if n in live and n in state.nodes]
        if b.done_at is not None:
            converged += given
        elif b.started_at is not None:
            converging += given
    down = dropped_off(converged, converging, d.name, d.version, reports, now, ttl)
    if len(down) <= budget:
        return None
    names = ", ".join(f"{n} ({why})" for n, why in down)
    reason = (
        f"{len(down)} node(s) of the started batches dropped off: {names}; more than "
        f"maxUnavailable {budget}"
    )
    return Halt(down[0][0], reason, now)


def _advance_batches(
    d: Deployable,
    gate: _Gate,
    batches: list[Batch],
    progress: dict[str, NodeProgress],
    live: set[str],
    reports: Mapping[str, NodeReport],
    now: float,
    ttl: float,
    events: list[PlanEvent],
) -> tuple[Phase, Halt | None, list[float], Wait | None]:
    """Start, judge and finish batches in order (updating ``batches``, ``progress`` and
    ``events`` in place) until one is still running; (phase, halt, wake times, wait)."""
    wakes: list[float] = []
    for i, batch in enumerate(batches):
        if batch.done_at is not None:
            continue
        members = [n for n in batch.nodes if n in live]
        if batch.started_at is None:
            if gate.paused:
                return "Progressing", None, wakes, None
            # a batch starts when a window of one of its nodes opens (so backpressure is
            # judged then, not hours before)
            closed_all = _closed_windows(gate, members, now)
            if members and len(closed_all) == len(members):
                wait = _window_wait([o for o in closed_all if o is not None])
                if wait is not None and wait.until is not None:
                    wakes.append(wait.until)
                return "Progressing", None, wakes, wait
            down = unavailable(sorted(live), reports, now, ttl)
            if gate.budget is not None and len(down) > gate.budget:
                names = ", ".join(f"{n} ({why})" for n, why in down)
                label = f"{len(down)} targeted node(s) unavailable: {names}"
                blocked = Wait(
                    "backpressure",
                    f"{label}; maxUnavailable {gate.budget}",
                    nodes=tuple(n for n, _ in down),
                )
                return "Progressing", None, wakes, blocked
            batch = batches[i] = replace(batch, started_at=now)
            events.append(_batch_event("started", d, i, len(batches), members))
        all_running = all_soaked = True
        closed: list[win.Opening] = []
        for n in members:
            given = progress.get(n)
            if given is None and gate.paused:  # paused: in-flight nodes only
                all_running = all_soaked = False
                continue
            if given is None:  # not given the target yet: only inside its window
                shut = _closed_windows(gate, [n], now)
                if shut:
                    all_running = all_soaked = False
                    closed += [o for o in shut if o is not None]
                    continue
                given = NodeProgress(started_at=now)
            delay = spread_delay(n, gate.fingerprint, d.rollout.spread_seconds)
            soak = 0 if batch.promoted else d.rollout.soak_seconds
            verdict = _judge_node(d, n, given, reports.get(n), now, ttl, delay, soak)
            if verdict.halt is not None:
                return "Halted", verdict.halt, wakes, None
            all_running &= verdict.running
            all_soaked &= verdict.soaked
            if verdict.wake is not None:
                wakes.append(verdict.wake)
            progress[n] = verdict.progress
        wait = _window_wait(closed)
        if wait is not None and wait.until is not None:
            wakes.append(wait.until)
        if not all_soaked:
            return ("Soaking" if all_running else "Progressing"), None, wakes, wait
        batches[i] = replace(batch, done_at=now)
        events.append(_batch_event("done", d, i, len(batches), members))
    return ("Succeeded" if live else "Pending"), None, wakes, None


def _closed_windows(gate: _Gate, members: Sequence[str], now: float) -> list[win.Opening | None]:
    """For each of ``members`` whose window is closed at ``now``: its next opening (None:
    none within a week)."""
    out: list[win.Opening | None] = []
    for n in members:
        node_windows = gate.windows.get(n)
        if not win.open_now(node_windows, now):
            assert isinstance(node_windows, tuple)  # only a list of windows can be closed
            out.append(win.next_opening(node_windows, now))
    return out


def _window_wait(closed: Sequence[win.Opening]) -> Wait | None:
    """The wait for the earliest opening among the batch's nodes whose window is closed."""
    if not closed:
        return None
    first = min(closed, key=lambda o: o.start)
    return Wait("window", first.label(), until=first.start)


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
    delay: int = 0,
    soak: int | None = None,
) -> _Verdict:
    # only reports received after the node was given the target count
    since_given = report is not None and report.received_at >= p.started_at
    bad = failed(report, d.name, d.version) if since_given else None
    if (
        bad is not None
        and p.retry
        and report is not None
        and report.generation <= p.failed_generation
    ):
        bad = None  # retried: the agent has not acted on the new document yet
    if bad is not None:
        why = f": {bad.message}" if bad.message else ""
        return _Verdict(p, halt=Halt(n, f"node {n} reported Failed for {_label(d)}{why}", now))
    config = d.target_digest  # config files and secrets' ciphertext (issue 17)
    if since_given and report is not None and runs(report, d.name, d.version, now, ttl, config):
        since = p.healthy_since if p.healthy_since is not None else report.received_at
        p = replace(p, healthy_since=since)
        soak_end = since + (d.rollout.soak_seconds if soak is None else soak)
        if now < soak_end:
            return _Verdict(p, running=True, wake=soak_end)
        return _Verdict(p, running=True, soaked=True)
    p = replace(p, healthy_since=None)
    # the spread delay is time the agent was told to wait before it starts
    deadline = p.started_at + delay + d.rollout.timeout_seconds
    if now >= deadline:
        return _Verdict(p, halt=Halt(n, _timeout_reason(n, d, report, now, ttl), now))
    return _Verdict(p, wake=deadline)


def _control_event(d: Deployable, c: Control, what: str) -> PlanEvent:
    return PlanEvent(
        "control-applied",
        f"{_label(d)}: {c.action} by {c.actor} ({c.reason}): {what}",
        release=d.name,
        node=c.node,
        details={"action": c.action, "seq": c.seq, "by": c.actor, "reason": c.reason},
    )


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
    if node in state.rolled_back or node in state.skipped:
        return state.previous.get(node)
    in_started = node in (started if started is not None else frozenset(state.started_nodes()))
    p = state.nodes.get(node)
    if in_started and p is not None:  # given: in a started batch and its window was open
        if p.retry:  # ``rollout retry``: the agent tries a version it remembers as failed
            target = {**target, "retryGeneration": p.retry}
        spread = state.spread_seconds
        if spread <= 0:
            return target
        delay = spread_delay(node, state.fingerprint, spread)
        return {**target, "notBefore": iso(p.started_at + delay)}
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


def held_nodes(nodes: Mapping[str, NodeFacts], now: float) -> frozenset[str]:
    """Nodes whose file holds them (``hold:``) at ``now``."""
    return frozenset(n for n, f in nodes.items() if f.hold is not None and f.hold.active(now))


def hold_ends(names: Iterable[str], nodes: Mapping[str, NodeFacts], now: float) -> list[float]:
    """When the holds of ``names`` that end later than ``now`` end (the planner wakes then)."""
    out = []
    for n in names:
        f = nodes.get(n)
        until = f.hold.until if f is not None and f.hold is not None else None
        if until is not None and until > now:
            out.append(until)
    return out


def step_release(
    d: Deployable,
    old: RolloutState | None,
    targets: Mapping[str, Mapping[str, JSON]],
    held: Sequence[str],
    desired: Mapping[str, Mapping[str, JSON]],
    nodes: Mapping[str, NodeFacts],
    reports: Mapping[str, NodeReport],
    now: float,
    ttl: float,
    controls: Mapping[str, Sequence[Control]] | None,
) -> tuple[Step, dict[str, Mapping[str, JSON]]]:
    """One release's pass, shared by ``compute_plan`` and the incremental planner: its
    rollout stepped and the workload entry each targeted node is given this pass.

    ``targets``: node -> workload document for ``d``, in ``target_nodes``' order (canaries
    first), held nodes excluded (they are ``held``); ``desired``: the stored documents.
    """
    targeted = list(targets)
    current = {n: workload_entry(desired.get(n), d.name) for n in targeted}
    gates = {n: win.effective(d.rollout.windows, nodes[n].windows) for n in targeted}
    step = step_rollout(
        d,
        old,
        targeted,
        current,
        reports,
        now,
        ttl,
        windows=gates,
        held=held,
        controls=(controls or {}).get(d.name, ()),
    )
    started = frozenset(step.state.started_nodes())
    given: dict[str, Mapping[str, JSON]] = {}
    for n in targeted:
        w = node_workload(step.state, n, targets[n], started)
        if w is not None:
            given[n] = w
    return step, given


def stale_events(
    stale: frozenset[str],
    stale_before: frozenset[str],
    reports: Mapping[str, NodeReport],
    now: float,
) -> list[PlanEvent]:
    """A node that went Stale since the previous pass, or reports again: one event each."""
    events = []
    for n in sorted(stale - stale_before):
        age = int(now - reports[n].received_at)
        events.append(PlanEvent("stale", f"node {n} went Stale: last report {age}s ago", node=n))
    for n in sorted((stale_before - stale) & set(reports)):
        events.append(PlanEvent("fresh", f"node {n} reports again", node=n))
    return events


def compute_plan(inputs: PlanInputs) -> Plan:
    """Desired state per node and each rollout's next step, from the inputs alone.

    Long because it is the planner's whole contract in order (stale nodes, each rollout
    stepped, desired documents per node, the next wake); each part is one call.
    """
    spec, nodes, rollouts, reports = inputs.spec, inputs.nodes, inputs.rollouts, inputs.reports
    desired, now, ttl, controls = inputs.desired, inputs.now, inputs.ttl, inputs.controls
    # A node with a stored document that left the inventory (its file was deleted, or it
    # is unlisted) gets an empty one: what it was given before must not stay desired.
    per_node: dict[str, list[Mapping[str, JSON]]] = {n: [] for n in [*nodes, *desired]}
    states: dict[str, Mapping[str, JSON]] = dict(rollouts)
    changed: set[str] = set()
    events: list[PlanEvent] = []
    wakes: list[float] = []
    latest = latest_versions(spec)
    held = held_nodes(nodes, now)
    wakes.extend(hold_ends(nodes, nodes, now))
    for name in sorted(latest):
        d = latest[name]
        targets: dict[str, Mapping[str, JSON]] = {}
        on_hold: list[str] = []
        for n in target_nodes(d, nodes):
            doc = workload_document(d, nodes[n])
            if doc is None:  # no artifact for the node's platform: it cannot run d
                continue
            if n in held:  # keeps what it has; not part of the rollout while held
                on_hold.append(n)
                if (kept := workload_entry(desired.get(n), name)) is not None:
                    per_node[n].append(kept)
                continue
            targets[n] = doc
        old_json = rollouts.get(name)
        old = state_from_json(old_json) if old_json is not None else None
        step, given = step_release(
            d, old, targets, on_hold, desired, nodes, reports, now, ttl, controls
        )
        new_json = state_to_json(step.state)
        if old_json != new_json:
            states[name] = new_json
            changed.add(name)
        events.extend(step.events)
        if step.wake_at is not None:
            wakes.append(step.wake_at)
        for n, w in given.items():
            per_node[n].append(w)

    out = {
        n: desired_document(n, per_node[n], inputs.revision, inputs.approval, desired.get(n))
        for n in sorted(per_node)
    }
    stale = frozenset(n for n, r in reports.items() if n in nodes and is_stale(r, now, ttl))
    events.extend(stale_events(stale, inputs.stale_before, reports, now))
    return Plan(
        desired=out,
        rollouts=states,
        changed_rollouts=frozenset(changed),
        events=tuple(events),
        next_wake_at=min(wakes) if wakes else None,
        stale=frozenset(stale),
    )
