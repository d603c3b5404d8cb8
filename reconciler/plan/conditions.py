"""The loop's status conditions from what one pass found. Pure.

``summarize(findings, previous, now)`` returns ``Stalled``, ``Reconciling`` and ``Ready``
(in that order), as Flux rolls step conditions up:

- ``Stalled`` is True when a human must act: the error that stopped the pass, an invalid
  approved revision, a halted rollout, or a refused (Unapproved) newest tip; its reason is
  the first of them, its message all of them joined with ``; ``;
- ``Reconciling`` is True while a live rollout is Progressing or Soaking;
- ``Ready`` is False while the source waits (fetch failed), before any approved revision,
  or while anything is stalled; else True with ``applied revision <sha>``.

A condition keeps its ``last_transition_time`` while its status stays the same.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from reconciler.plan.state import RolloutState, state_from_json
from reconciler.spec import JSON

ConditionStatus = Literal["True", "False", "Unknown"]
ORDER = ("Stalled", "Reconciling", "Ready")


@dataclass(frozen=True)
class Condition:
    type: str  # Ready | Reconciling | Stalled
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: float
    observed_revision: str | None = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedRevision": self.observed_revision,
        }

    def same(self, other: Condition) -> bool:
        return (self.status, self.reason, self.message, self.observed_revision) == (
            other.status,
            other.reason,
            other.message,
            other.observed_revision,
        )


@dataclass(frozen=True)
class Findings:
    """What a pass found, as far as the conditions care."""

    revision: str | None  # the applied revision after the pass (None if it stopped early)
    planned: bool  # a plan was computed (there is an applied spec)
    stalled: Sequence[tuple[str, str]] = ()  # (reason, message): error, Invalid
    halted: Sequence[str] = ()  # "name version: reason" of halted live rollouts
    busy: Sequence[str] = ()  # "name version Phase batch i/n" of moving live rollouts
    unapproved: str | None = None  # the refused newest tip's reason, if one is shown
    waiting: tuple[str, str] | None = None  # (reason, message) of a failed fetch


def rollout_progress(
    rollouts: Mapping[str, Mapping[str, JSON]],
    live: Collection[str],
    parsed: Mapping[str, RolloutState] | None = None,
) -> tuple[list[str], list[str]]:
    """(halted, busy) lines for the rollouts of workloads that still exist, by name.

    ``parsed``: states the caller already holds as values (the planner's memo), so a
    rollout of 10,000 nodes is not parsed again on every pass."""
    halted: list[str] = []
    busy: list[str] = []
    for name in sorted(rollouts):
        known = parsed.get(name) if parsed is not None else None
        s = known if known is not None else state_from_json(rollouts[name])
        if s is None or name not in live:
            continue
        if s.phase == "Halted" and s.halt is not None:
            halted.append(f"{s.name} {s.version}: {s.halt.reason}")
        elif s.phase in ("Progressing", "Soaking"):
            i = s.active_batch()
            batch = f" batch {i + 1}/{len(s.batches)}" if i is not None else ""
            # the wait's label, not "in 5h 12m": a condition changes only when its cause does
            wait = ""
            if s.wait is not None:
                wait = (
                    f", waiting for window {s.wait.label}"
                    if s.wait.kind == "window"
                    else f", waiting: {s.wait.label}"
                )
            if s.paused is not None:
                wait += f", paused by {s.paused.by}: {s.paused.reason}"
            busy.append(f"{s.name} {s.version} {s.phase}{batch}{wait}")
    return halted, busy


def _wanted(f: Findings) -> list[tuple[str, ConditionStatus, str, str]]:
    stalled = list(f.stalled) + [("RolloutHalted", h) for h in f.halted]
    if f.unapproved is not None and not any(r == "Invalid" for r, _ in stalled):
        stalled.append(("Unapproved", f.unapproved))
    want: list[tuple[str, ConditionStatus, str, str]] = []
    if stalled:
        want.append(("Stalled", "True", stalled[0][0], "; ".join(m for _, m in stalled)))
    else:
        want.append(("Stalled", "False", "Succeeded", "nothing needs a human"))
    if f.busy:
        want.append(("Reconciling", "True", "Progressing", "; ".join(f.busy)))
    else:
        want.append(("Reconciling", "False", "Succeeded", "no rollout in progress"))
    if f.waiting is not None:
        want.append(("Ready", "False", *f.waiting))
    elif not f.planned:
        reason, message = stalled[0] if stalled else ("NoApprovedRevision", "")
        want.append(("Ready", "False", reason, message or "no approved revision yet"))
    elif stalled:
        want.append(("Ready", "False", stalled[0][0], stalled[0][1]))
    else:
        want.append(("Ready", "True", "Succeeded", f"applied revision {f.revision}"))
    return want


def summarize(
    findings: Findings, previous: Sequence[Mapping[str, JSON]], now: float
) -> tuple[Condition, ...]:
    """The conditions for ``findings``; ``previous`` is the stored list (JSON shape)."""
    old = {str(c.get("type")): c for c in previous}
    out: list[Condition] = []
    for ctype, status, reason, message in _wanted(findings):
        prev = old.get(ctype)
        since = now
        if prev is not None and prev.get("status") == status:
            t = prev.get("lastTransitionTime")
            since = float(t) if isinstance(t, int | float) else now
        out.append(Condition(ctype, status, reason, message, since, findings.revision))
    return tuple(out)


def in_order(previous: Sequence[Mapping[str, JSON]]) -> list[Mapping[str, JSON]]:
    """The stored conditions as ``summarize`` orders them (to tell whether they changed)."""
    old = {str(c.get("type")): c for c in previous}
    return [old[t] for t in ORDER if t in old]
