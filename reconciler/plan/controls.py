"""Imperative rollout controls (pause, resume, retry, promote, skip-node) as a fold. Pure.

An operator's control is a record in the store (``rollout_controls``), written by the
admin API with who and why; the planner receives every record of a workload as an
argument and folds them into the rollout state here. Controls steer a rollout of the
approved version only; none of them can change which version is approved or desired.

- ``pause`` / ``resume`` are levels, per workload NAME (not per rollout): the newest of
  the two wins, so a pause survives a new approved revision (the new rollout starts
  paused). While paused no node is *given* the target: no batch starts and a node of the
  running batch that was not given it yet (its window was closed) waits. Nodes already
  given the target are still judged: they may finish their soak (the batch is done) or
  fail (the rollout halts), since pausing must not hide a failure.
- ``retry``, ``promote`` and ``skip-node`` act once, on the rollout they were issued
  against (its ``fingerprint``); ``RolloutState.control_seq`` is the newest record
  folded in, so a record is applied exactly once and replanning is idempotent.
- ``retry`` lifts a halt: the nodes of the started, unfinished batches are given the
  target again at the record's time (older reports, their ``Failed`` included, no longer
  count) and their workload entry carries ``retryGeneration: N``, the rollout's retry count, so an
  agent that remembers the version as failed on that node tries it again. A node's
  ``Failed`` counts again only from a report of a newer document than the one it had
  acted on when retried (until then its heartbeats repeat the old failure).
- ``promote`` ends the soak of the running batch: that batch is done as soon as its
  nodes run the target healthy (at once when they already do).
- ``skip-node`` leaves a node behind for this rollout: it is no longer part of it (never
  blocks a batch, never counts as unavailable), keeps the document it had before the
  rollout, and a halt that it caused is lifted (the others are judged again).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from reconciler.plan.observations import NodeReport
from reconciler.plan.state import Batch, NodeProgress, Pause, RolloutState

Action = Literal["pause", "resume", "retry", "promote", "skip-node"]
ACTIONS: tuple[Action, ...] = ("pause", "resume", "retry", "promote", "skip-node")


@dataclass(frozen=True)
class Control:
    """One operator control as stored (``seq`` assigned by the store, increasing)."""

    seq: int
    name: str  # the agent or model name
    action: Action
    fingerprint: str  # the rollout it was issued against
    actor: str  # who: the admin token's subject and what the caller said it was
    reason: str
    at: float
    node: str | None = None  # skip-node only


@dataclass(frozen=True)
class Applied:
    """The state after folding the controls, and what each new record did (for events)."""

    state: RolloutState
    done: tuple[tuple[Control, str], ...]  # (record, what it did)


def pause_of(controls: Sequence[Control]) -> Pause | None:
    """The pause in force: the newest pause or resume of the workload decides."""
    for c in sorted(controls, key=lambda c: c.seq, reverse=True):
        if c.action == "pause":
            return Pause(by=c.actor, reason=c.reason, at=c.at)
        if c.action == "resume":
            return None
    return None


def apply_controls(
    state: RolloutState,
    controls: Sequence[Control],
    reports: Mapping[str, NodeReport] | None = None,
) -> Applied:
    """Fold ``controls`` (every record of ``state.name``) into ``state``; ``reports``: the
    last report per node (a retry notes which document each retried node had acted on)."""
    pause = pause_of(controls)
    if pause != state.paused:
        state = replace(state, paused=pause)
    done: list[tuple[Control, str]] = []
    fresh = sorted(
        (c for c in controls if c.fingerprint == state.fingerprint and c.seq > state.control_seq),
        key=lambda c: c.seq,
    )
    for c in fresh:
        state, what = _one(state, c, reports or {})
        state = replace(state, control_seq=c.seq)
        if what is not None:
            done.append((c, what))
    return Applied(state, tuple(done))


def _one(
    state: RolloutState, c: Control, reports: Mapping[str, NodeReport]
) -> tuple[RolloutState, str | None]:
    if c.action == "retry":
        return _retry(state, c, reports)
    if c.action == "promote":
        return _promote(state)
    if c.action == "skip-node" and c.node is not None:
        return _skip(state, c.node)
    return state, None  # pause/resume: levels folded by pause_of (the API audited them)


def _unfinished(state: RolloutState) -> list[str]:
    return [
        n for b in state.batches if b.started_at is not None and b.done_at is None for n in b.nodes
    ]


def _retry(
    state: RolloutState, c: Control, reports: Mapping[str, NodeReport]
) -> tuple[RolloutState, str]:
    if state.phase != "Halted":
        return state, f"nothing to retry (phase {state.phase})"
    count = state.retries + 1
    again = [n for n in _unfinished(state) if n not in state.skipped]
    nodes = dict(state.nodes)
    for n in again:
        # given again now: reports before this moment (the Failed one) no longer count
        r = reports.get(n)
        seen = r.generation if r is not None else 0
        nodes[n] = NodeProgress(started_at=c.at, retry=count, failed_generation=seen)
    lifted = replace(
        state, phase="Progressing", halt=None, rolled_back=(), nodes=nodes, retries=count
    )
    return lifted, f"retry {count}: {', '.join(again) or 'no node'} given the target again"


def _promote(state: RolloutState) -> tuple[RolloutState, str]:
    i = state.active_batch()
    if state.phase == "Halted" or i is None or state.batches[i].started_at is None:
        return state, f"nothing to promote (phase {state.phase})"
    batches: list[Batch] = list(state.batches)
    batches[i] = replace(batches[i], promoted=True)
    return replace(state, batches=tuple(batches)), f"soak of batch {i + 1} ended"


def _skip(state: RolloutState, node: str) -> tuple[RolloutState, str]:
    if node in state.skipped:
        return state, f"{node} already skipped"
    skipped = tuple(sorted({*state.skipped, node}))
    out = replace(state, skipped=skipped)
    what = f"{node} left behind"
    if state.phase == "Halted" and state.halt is not None and state.halt.node == node:
        out = replace(out, phase="Progressing", halt=None, rolled_back=())
        what += "; the halt it caused is lifted"
    return out, what
