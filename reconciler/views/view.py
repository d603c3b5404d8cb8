"""Display rows from the fleet status document (``GET /v1/fleet``) and audit events.

Pure: the document and the current time are arguments. Shared by ``fleetkeeper status``
(rich tables) and the dashboard (HTML), so both say the same thing. Unknown or missing
fields degrade to "-" rather than failing: the server may be newer than this client.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from reconciler.views.timefmt import ago, duration, iso, to_unix

Tone = Literal["ok", "busy", "bad", "stale", "muted"]

DONE_PHASES = frozenset({"Succeeded", "Superseded"})
FAILED_PHASES = frozenset({"Halted", "Invalid", "Unapproved"})
BUSY_PHASES = frozenset({"Pending", "Progressing", "Soaking"})
BAD_WORKLOAD_PHASES = frozenset({"Failed", "Unhealthy", "RolledBack"})

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_IN_PROGRESS = 4


@dataclass(frozen=True)
class WorkloadCell:
    name: str
    desired: str
    running: str
    phase: str
    converged: bool
    tone: Tone
    message: str


@dataclass(frozen=True)
class NodeRow:
    node: str
    platform: str
    accelerator: str
    roles: str
    health: str
    last_seen: str
    workloads: tuple[WorkloadCell, ...]
    tone: Tone


@dataclass(frozen=True)
class BatchStep:
    index: int
    nodes: tuple[str, ...]
    state: str
    started: str
    finished: str
    tone: Tone


@dataclass(frozen=True)
class ReleaseRow:
    agent: str
    kind: str
    version: str
    approval: str
    phase: str
    batch: str
    soak_left: str
    reason: str
    tone: Tone
    batches: tuple[BatchStep, ...]
    # the operator controls that can act on this row now (a live rollout row only)
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditRow:
    time: str
    kind: str
    release: str
    node: str
    revision: str
    message: str
    tone: Tone


def _s(value: object, default: str = "-") -> str:
    if value is None or value == "":
        return default
    return str(value)


def short_sha(value: object) -> str:
    text = _s(value)
    return text[:10] if len(text) == 40 and all(c in "0123456789abcdef" for c in text) else text


def approval_short(approval: object) -> str:
    """ "merge 1a2b3c4d5e", "tag deploy/0.8.5 by alice", "signed-commit ab12… by forge"."""
    if not isinstance(approval, Mapping):
        return "-"
    kind = _s(approval.get("kind"), "?")
    ref = short_sha(approval.get("ref")).removeprefix("refs/tags/")
    signers = approval.get("signers") or []
    who = ", ".join(str(s) for s in signers) if isinstance(signers, list) else ""
    return f"{kind} {ref}" + (f" by {who}" if who else "")


def health_tone(health: str) -> Tone:
    """Tone of a health cell; ``Healthy, held ...`` is toned as ``Healthy``."""
    # Unlisted: registered without a file in nodes/, given nothing (muted, not an alarm)
    tones: dict[str, Tone] = {"Healthy": "ok", "Stale": "stale", "Unhealthy": "bad"}
    return tones.get(health.split(",")[0], "muted")


def release_tone(phase: str) -> Tone:
    if phase in FAILED_PHASES:
        return "bad"
    if phase in BUSY_PHASES:
        return "busy"
    if phase == "Superseded":
        return "muted"
    return "ok" if phase == "Succeeded" else "muted"


def _workload(w: Mapping[str, Any]) -> WorkloadCell:
    desired, running, phase = _s(w.get("desired")), _s(w.get("running")), _s(w.get("phase"))
    converged = desired != "-" and desired == running and w.get("healthy", True) is not False
    if phase in BAD_WORKLOAD_PHASES or w.get("healthy") is False:
        tone: Tone = "bad"
    elif converged:
        tone = "ok"
    else:
        tone = "busy"
    return WorkloadCell(
        name=_s(w.get("name")),
        desired=desired,
        running=running,
        phase=phase,
        converged=converged,
        tone=tone,
        message=_s(w.get("message"), ""),
    )


def _accelerator(n: Mapping[str, Any]) -> str:
    """The accelerator, then the model runtimes the node can start: ``cuda +llama-cpp``."""
    runtimes = n.get("runtimes")
    usable = (
        sorted(str(k) for k, v in runtimes.items() if v) if isinstance(runtimes, Mapping) else []
    )
    accel = _s(n.get("accelerator"))
    return f"{accel} +{','.join(usable)}" if usable else accel


def node_rows(status: Mapping[str, Any], now: float) -> list[NodeRow]:
    rows = []
    for n in status.get("nodes") or []:
        health = _s(n.get("health"), "Unknown")
        workloads = tuple(_workload(w) for w in n.get("workloads") or [])
        tone = health_tone(health)
        if tone == "ok" and any(w.tone == "bad" for w in workloads):
            tone = "bad"
        judged = n.get("desired")
        phase = judged.get("phase") if isinstance(judged, Mapping) else None
        if phase in ("Refused", "DesiredExpired"):
            # the node keeps its last good state but does not take what it is served
            health, tone = f"{health}, desired {phase}", "bad"
        roles = n.get("roles") or []
        if n.get("held") is True:  # shown in the health cell: CLI and dashboard alike
            until = to_unix(n.get("heldUntil"))
            health += f", held until {iso(until)[:10]}" if until is not None else ", held"
        rows.append(
            NodeRow(
                node=_s(n.get("node")),
                platform=_s(n.get("platform")),
                accelerator=_accelerator(n),
                roles=", ".join(str(r) for r in roles) if roles else "-",
                health=health,
                last_seen=ago(to_unix(n.get("lastSeen")), now),
                workloads=workloads,
                tone=tone,
            )
        )
    return sorted(rows, key=lambda r: r.node)


def _batch(i: int, b: object, release_phase: str, now: float) -> BatchStep:
    if not isinstance(b, Mapping):
        return BatchStep(i, (), "-", "-", "-", "muted")
    nodes = b.get("nodes") or []
    started = to_unix(b.get("startedAt", b.get("started")))
    finished = to_unix(b.get("doneAt", b.get("finishedAt", b.get("finished"))))
    state = _s(b.get("state") or b.get("phase") or b.get("status"), "")
    if not state:  # the store form has only times: say what they mean
        if finished is not None:
            state = "Done"
        elif started is None:
            state = "Waiting"
        elif release_phase in ("Halted", "Superseded"):
            state = release_phase
        else:
            state = "Soaking" if release_phase == "Soaking" else "Rolling out"
    lower = state.lower()
    if lower in ("halted", "failed", "timedout", "timeout"):
        tone: Tone = "bad"
    elif lower in ("succeeded", "done", "healthy", "complete", "completed"):
        tone = "ok"
    elif lower in ("pending", "waiting", "superseded", "-"):
        tone = "muted"
    else:
        tone = "busy"
    index = b.get("index", i)
    return BatchStep(
        index=index if isinstance(index, int) else i,
        nodes=tuple(str(x) for x in nodes) if isinstance(nodes, list) else (),
        state=state,
        started=ago(started, now) if started is not None else "-",
        finished=ago(finished, now) if finished is not None else "-",
        tone=tone,
    )


def release_rows(status: Mapping[str, Any], now: float) -> list[ReleaseRow]:
    top_approval = status.get("approval")
    rows = []
    for r in status.get("releases") or []:
        phase = _s(r.get("phase"), "Unknown")
        soak = r.get("soakRemainingSeconds")
        soak_left = (
            duration(math.ceil(soak))
            if isinstance(soak, int | float) and not isinstance(soak, bool) and soak > 0
            else "-"
        )
        batches = r.get("batches") or []
        rows.append(
            ReleaseRow(
                agent=_s(r.get("agent")),
                kind=_s(r.get("kind"), "process"),
                # a config-only rollout is the same version with a new config digest
                version=_s(r.get("version"))
                + (f" +config {r['configDigest'][:8]}" if r.get("configDigest") else ""),
                approval=approval_short(
                    r.get("approval", None if phase in FAILED_PHASES - {"Halted"} else top_approval)
                ),
                phase=phase,
                batch=_s(r.get("batch")),
                soak_left=soak_left,
                reason=_s(r.get("reason"), ""),
                tone=release_tone(phase),
                batches=tuple(_batch(i + 1, b, phase, now) for i, b in enumerate(batches))
                if isinstance(batches, list)
                else (),
                actions=control_actions(r),
            )
        )
    return rows


def control_actions(r: Mapping[str, Any]) -> tuple[str, ...]:
    """The rollout controls that can act on release row ``r`` now (as the API judges)."""
    if "paused" not in r:  # a superseded, unapproved or invalid row: no rollout to steer
        return ()
    phase = r.get("phase")
    out = ["resume" if r.get("paused") else "pause"]
    if phase == "Halted":
        out.append("retry")
    if phase in ("Progressing", "Soaking"):
        out.append("promote")
    return tuple(out)


def exit_code(status: Mapping[str, Any]) -> int:
    """0 when every release is done, 1 when any failed (Halted/Invalid/Unapproved), else 4.

    4 means "still rolling out": a script can wait with ``until [ $? -ne 4 ]``.
    """
    phases = [str(r.get("phase")) for r in status.get("releases") or []]
    if any(p in FAILED_PHASES for p in phases):
        return EXIT_FAILED
    if all(p in DONE_PHASES for p in phases):
        return EXIT_OK
    return EXIT_IN_PROGRESS


def summary(status: Mapping[str, Any]) -> str:
    """One line: revision, approval, node and release counts by state."""
    nodes = status.get("nodes") or []
    healthy = sum(1 for n in nodes if n.get("health") == "Healthy")
    stale = sum(1 for n in nodes if n.get("health") == "Stale")
    unlisted = sum(1 for n in nodes if n.get("health") == "Unlisted")
    releases = status.get("releases") or []
    failed = sum(1 for r in releases if r.get("phase") in FAILED_PHASES)
    busy = sum(1 for r in releases if r.get("phase") in BUSY_PHASES)
    parts = [
        f"revision {short_sha(status.get('revision'))}",
        f"approved by {approval_short(status.get('approval'))}",
        f"{healthy}/{len(nodes) - unlisted} nodes healthy"
        + (f", {stale} stale" if stale else "")
        + (f", {unlisted} unlisted (no workload)" if unlisted else ""),
        f"{len(releases)} releases"
        + (f", {busy} rolling out" if busy else "")
        + (f", {failed} failed" if failed else ""),
    ]
    return " · ".join(parts)


def event_dict(event: object) -> dict[str, Any]:
    """An audit event as a dict, from the API's JSON or a store ``AuditEvent`` value."""
    if isinstance(event, Mapping):
        return dict(event)
    fields = ("id", "time", "kind", "message", "revision", "release", "node", "details")
    return {k: getattr(event, k, None) for k in fields}


def audit_tone(kind: str) -> Tone:
    k = kind.lower()
    if any(w in k for w in ("refused", "invalid", "halt", "fail", "stale", "unapproved")):
        return "bad"
    if any(w in k for w in ("succeeded", "applied", "approved")):
        return "ok"
    if any(w in k for w in ("rollout", "step", "batch", "soak")):
        return "busy"
    return "muted"


def audit_rows(events: Sequence[object]) -> list[AuditRow]:
    rows = []
    for raw in events:
        e = event_dict(raw)
        ts = to_unix(e.get("time"))
        kind = _s(e.get("kind"))
        rows.append(
            AuditRow(
                time=iso(ts) if ts is not None else "-",
                kind=kind,
                release=_s(e.get("release")),
                node=_s(e.get("node")),
                revision=short_sha(e.get("revision")),
                message=_s(e.get("message"), ""),
                tone=audit_tone(kind),
            )
        )
    return rows
