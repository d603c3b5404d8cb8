"""The fleet status document (``GET /v1/fleet``, ``schema/fleet-status.schema.json``). Pure.

Built from what the store holds (nodes, rollout state, last reports, desired documents)
and ``now``; the spec, when given, adds declared nodes that never registered and hides
rollouts of workloads that no longer exist.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fleetkeeper_common.digests import secrets_digest, target_digest
from reconciler.plan.admission import claims_of, scope_covers_claims
from reconciler.plan.observations import NodeReport
from reconciler.plan.rollout import workload_entry
from reconciler.plan.select import latest_versions
from reconciler.plan.state import RolloutState, state_from_json
from reconciler.plan.windows import wait_text
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import AppliedRevision, DesiredRecord, NodeRecord, ReportRecord


def rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def node_health(report: NodeReport | None, now: float, ttl: float) -> str:
    """``Stale`` past the heartbeat TTL (or never seen), else ``Unhealthy`` if any workload is."""
    if report is None or not report.fresh(now, ttl):
        return "Stale"
    return "Healthy" if report.healthy() else "Unhealthy"


def _node_row(
    name: str,
    facts: Mapping[str, JSON],
    report: NodeReport | None,
    desired: Mapping[str, JSON] | None,
    now: float,
    ttl: float,
    unlisted: bool = False,
) -> dict[str, JSON]:
    names: set[str] = set(report.workloads) if report is not None else set()
    items = desired.get("workloads") if desired is not None else None
    for w in items if isinstance(items, list) else []:
        if isinstance(w, dict) and isinstance(w.get("name"), str):
            names.add(str(w["name"]))
    workloads: list[JSON] = []
    for wname in sorted(names):
        entry = workload_entry(desired, wname)
        want = entry.get("version") if entry is not None else None
        seen = report.workloads.get(wname) if report is not None else None
        row: dict[str, JSON] = {
            "name": wname,
            "desired": want if isinstance(want, str) else None,
            "running": seen.version if seen is not None else None,
            "phase": seen.phase if seen is not None else "Pending",
        }
        config = entry.get("config") if entry is not None else None
        sealed = entry.get("secrets") if entry is not None else None
        if isinstance(config, dict) or sealed or (seen is not None and seen.config_digest):
            row["desiredConfig"] = _desired_digest(config, sealed)
            row["configDigest"] = seen.config_digest if seen is not None else None
        if seen is not None:
            row["healthy"] = seen.healthy
            if seen.message:
                row["message"] = seen.message
        workloads.append(row)
    roles = facts.get("roles")
    runtimes = facts.get("runtimes")
    platform, accelerator = facts.get("platform"), facts.get("accelerator")
    judged: dict[str, JSON] = {}
    if report is not None and report.desired_phase:
        judged = {"phase": report.desired_phase}
        if report.desired_message:
            judged["message"] = report.desired_message
    return {
        "node": name,
        # Unlisted: registered without a file in nodes/ and not admitted, so planned nothing
        "health": "Unlisted" if unlisted else node_health(report, now, ttl),
        "lastSeen": rfc3339(report.received_at) if report is not None else None,
        "platform": platform if isinstance(platform, str) else None,
        "accelerator": accelerator if isinstance(accelerator, str) else None,
        "roles": [str(r) for r in roles] if isinstance(roles, list) else [],
        "runtimes": dict(runtimes) if isinstance(runtimes, dict) else {},
        "workloads": workloads,
        **({"desired": judged} if judged else {}),
    }


def _batch_state(s: RolloutState, i: int) -> str:
    b = s.batches[i]
    if b.done_at is not None:
        return "Done"
    if b.started_at is None:
        return "Superseded" if s.phase == "Superseded" else "Pending"
    if s.phase == "Halted":
        return "Halted"
    return "Soaking" if s.phase == "Soaking" else "Progressing"


def _soak_remaining(s: RolloutState, now: float) -> float | None:
    i = s.active_batch()
    if s.phase != "Soaking" or i is None:
        return None
    ends = [
        p.healthy_since + s.soak_seconds
        for n in s.batches[i].nodes
        if (p := s.nodes.get(n)) is not None and p.healthy_since is not None
    ]
    return max(0.0, max(ends) - now) if ends else None


def _batch_label(s: RolloutState) -> str | None:
    m = len(s.batches)
    if m == 0:
        return None
    if s.phase == "Succeeded":
        return f"{m}/{m}"
    if s.phase == "Halted" and s.halt is not None:
        for i, b in enumerate(s.batches):
            if s.halt.node in b.nodes:
                return f"{i + 1}/{m}"
    active = s.active_batch()
    return f"{(active if active is not None else m - 1) + 1}/{m}"


def pause_text(s: RolloutState) -> str | None:
    """``Paused by alice: disk alarms on gpu-3`` while a pause is in force."""
    if s.paused is None:
        return None
    return f"Paused by {s.paused.by}: {s.paused.reason}"


def _reason(s: RolloutState, reports: Mapping[str, NodeReport], now: float, ttl: float) -> str:
    paused = pause_text(s)
    if s.phase == "Halted" and s.halt is not None:
        back = f"; rolled back on {', '.join(s.rolled_back)}" if s.rolled_back else ""
        return s.halt.reason + back + (f"; {paused}" if paused else "")
    if s.phase == "Pending":
        return "no node matches its targets (or has an artifact for its platform)"
    held = f" (held: {', '.join(s.held)})" if s.held else ""
    held += f" (skipped: {', '.join(s.skipped)})" if s.skipped else ""
    if paused is not None:  # a Succeeded rollout too: the next version will wait
        return paused + held
    if s.wait is not None and s.phase == "Progressing":
        if s.wait.kind == "window" and s.wait.until is not None:
            return wait_text(s.wait.label, s.wait.until, now) + held
        return f"Waiting: {s.wait.label}{held}"
    return (_progress_reason(s, reports, now, ttl) + held).strip()


def _progress_reason(
    s: RolloutState, reports: Mapping[str, NodeReport], now: float, ttl: float
) -> str:
    i = s.active_batch()
    if s.phase == "Progressing" and i is not None:
        waiting = []
        for n in s.batches[i].nodes:
            p = s.nodes.get(n)
            if p is not None and p.healthy_since is not None:
                continue
            r = reports.get(n)
            w = r.workloads.get(s.name) if r is not None else None
            if r is None or not r.fresh(now, ttl):
                waiting.append(f"{n} (Stale)")
            else:
                waiting.append(f"{n} ({w.phase if w is not None else 'not reported'})")
        return "waiting for " + ", ".join(waiting) if waiting else "waiting for reports"
    if s.phase == "Soaking":
        left = _soak_remaining(s, now)
        # rounded up, like the tables: never "0s left" while still soaking
        return f"soaking, {math.ceil(left or 0)}s left"
    return ""


def release_row(
    s: RolloutState, reports: Mapping[str, NodeReport], now: float, ttl: float
) -> dict[str, JSON]:
    """One ``releases[]`` row: phase, batch n/m, reason, soak left, per-batch timeline."""
    batches: list[JSON] = [
        {
            "index": i + 1,
            "nodes": list(b.nodes),
            "state": _batch_state(s, i),
            "startedAt": rfc3339(b.started_at),
            "doneAt": rfc3339(b.done_at),
        }
        for i, b in enumerate(s.batches)
    ]
    return {
        "agent": s.name,
        "kind": s.kind,
        "version": s.version,
        "configDigest": s.config_digest,
        "phase": s.phase,
        "batch": _batch_label(s),
        "reason": _reason(s, reports, now, ttl) or None,
        "soakRemainingSeconds": _soak_remaining(s, now),
        "batches": batches,
        "held": list(s.held),
        "waitingUntil": rfc3339(s.wait.until) if s.wait is not None else None,
        "paused": (
            {"by": s.paused.by, "reason": s.paused.reason, "at": rfc3339(s.paused.at)}
            if s.paused is not None
            else None
        ),
        "skipped": list(s.skipped),
        "retries": s.retries,
    }


def _release_rows(
    spec: FleetSpec | None,
    rollout_states: Mapping[str, Mapping[str, JSON]],
    last: Mapping[str, NodeReport],
    now: float,
    ttl: float,
    *,
    phases_only: bool = False,
) -> list[JSON]:
    """One row per live rollout, after the row of the rollout it superseded (if shown);
    ``phases_only``: each row's agent, version and phase, nothing more."""
    live = set(latest_versions(spec)) if spec is not None else None
    releases: list[JSON] = []
    for name in sorted(rollout_states):
        if live is not None and name not in live:
            continue
        s = state_from_json(rollout_states[name])
        if s is None:
            continue
        if s.phase != "Succeeded" and s.history and s.history[0].phase == "Superseded":
            h = s.history[0]
            releases.append(
                {
                    "agent": s.name,
                    "kind": s.kind,
                    "version": h.version,
                    "phase": "Superseded",
                    "batch": None,
                    "reason": h.reason,
                    "soakRemainingSeconds": None,
                    "batches": [],
                }
            )
        if phases_only:
            releases.append({"agent": s.name, "version": s.version, "phase": s.phase})
        else:
            releases.append(release_row(s, last, now, ttl))
    return releases


def fleet_status(
    spec: FleetSpec | None,
    nodes: Sequence[NodeRecord],
    rollout_states: Mapping[str, Mapping[str, JSON]],
    reports: Sequence[ReportRecord],
    desired: Sequence[DesiredRecord],
    now: float,
    ttl: float,
    *,
    applied: AppliedRevision | None = None,
    blocked: Sequence[Mapping[str, JSON]] = (),
) -> dict[str, JSON]:
    """The ``GET /v1/fleet`` document.

    ``blocked``: release rows for the newest tip when it is ``Unapproved`` or ``Invalid``
    (the loop keeps them in store meta ``tip-status``: ``reconciler.loop.meta``,
    ``reconciler.loop.tip``).
    """
    last = {r.node: NodeReport.from_json(r.node, r.report, r.received_at) for r in reports}
    facts: dict[str, Mapping[str, JSON]] = {}
    unlisted: set[str] = set()
    for rec in nodes:
        facts[rec.name] = rec.facts
        if is_unlisted(spec, rec):
            unlisted.add(rec.name)
    if spec is not None:
        for name, n in spec.nodes.items():
            reg = facts.get(name, {})
            facts[name] = {
                "platform": n.platform,
                "accelerator": n.accelerator,
                "roles": list(n.roles),
                "runtimes": reg.get("runtimes", {}),
            }
    docs = {d.node: d.document for d in desired}
    names = sorted(set(facts) | set(docs))
    node_rows: list[JSON] = [
        _node_row(n, facts.get(n, {}), last.get(n), docs.get(n), now, ttl, n in unlisted)
        for n in names
    ]
    for row in node_rows:
        assert isinstance(row, dict)
        spec_node = spec.nodes.get(str(row["node"])) if spec is not None else None
        hold = spec_node.hold if spec_node is not None else None
        if hold is not None and hold.active(now):
            row["held"] = True
            row["heldUntil"] = rfc3339(hold.until)

    releases = _release_rows(spec, rollout_states, last, now, ttl)
    releases.extend(dict(b) for b in blocked)
    return {
        "revision": applied.sha if applied is not None else None,
        "approval": dict(applied.approval) if applied is not None else None,
        "nodes": node_rows,
        "releases": releases,
    }


def is_unlisted(spec: FleetSpec | None, rec: NodeRecord) -> bool:
    """Registered without a file in nodes/ and not admitted (``fleet.unlisted: allow``
    and a join token whose scope covers its claims): it is planned nothing."""
    if spec is None or rec.name in spec.nodes:
        return False
    scoped = scope_covers_claims(rec.admission, claims_of(rec.facts))
    return not (spec.fleet.unlisted == "allow" and scoped)


@dataclass(frozen=True)
class FleetGauges:
    """What ``/metrics`` shows of the fleet: nodes by health, each release row's phase."""

    health: Mapping[str, int]
    releases: Sequence[tuple[str, str]]  # ("agent@version", phase), as the rows go


def fleet_gauges(
    spec: FleetSpec | None,
    registered: Iterable[str],
    unlisted: Collection[str],
    with_desired: Iterable[str],
    rollout_states: Mapping[str, Mapping[str, JSON]],
    last: Mapping[str, NodeReport],
    now: float,
    ttl: float,
    *,
    blocked: Sequence[Mapping[str, JSON]] = (),
) -> FleetGauges:
    """The counts ``fleet_status`` implies (``gauges_of``), without building its rows:
    building 8,000 nodes' status document for every Prometheus scrape cost 469 ms of
    CPU and a 37 MiB peak (bench/metrics_scrape.py). ``registered``: node names in the
    store; ``unlisted`` those of them ``is_unlisted``; ``with_desired``: nodes with a
    desired document."""
    names = set(registered) | set(with_desired)
    if spec is not None:
        names |= set(spec.nodes)
    health: dict[str, int] = {}
    for n in names:
        state = "Unlisted" if n in unlisted else node_health(last.get(n), now, ttl)
        health[state] = health.get(state, 0) + 1
    rows = _release_rows(spec, rollout_states, last, now, ttl, phases_only=True)
    rows.extend(dict(b) for b in blocked)
    return FleetGauges(health, [_release_phase(r) for r in rows if isinstance(r, dict)])


def gauges_of(status: Mapping[str, JSON]) -> FleetGauges:
    """The gauges of a fleet-status document already built (``GET /v1/fleet``)."""
    health: dict[str, int] = {}
    nodes, releases = status.get("nodes"), status.get("releases")
    for n in nodes if isinstance(nodes, list) else []:
        state = str(n.get("health")) if isinstance(n, dict) else "None"
        health[state] = health.get(state, 0) + 1
    rows = releases if isinstance(releases, list) else []
    return FleetGauges(health, [_release_phase(r) for r in rows if isinstance(r, dict)])


def _release_phase(row: Mapping[str, JSON]) -> tuple[str, str]:
    return f"{row.get('agent')}@{row.get('version')}", str(row.get("phase"))


def _desired_digest(config: JSON | None, sealed: JSON | None) -> str | None:
    """What the node should report as configDigest: the config digest, folded with the
    secrets' ciphertext digest when there are secrets (fleetkeeper_common.digests)."""
    digest = config.get("digest") if isinstance(config, dict) else None
    entries = [
        (str(s.get("name")), str(s.get("as")), str(s.get("from")), str(s.get("age")))
        for s in (sealed if isinstance(sealed, list) else [])
        if isinstance(s, dict)
    ]
    return target_digest(digest if isinstance(digest, str) else None, secrets_digest(entries))
