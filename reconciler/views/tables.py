"""Rich tables for ``fleetkeeper status`` and ``fleetkeeper audit`` (pure rendering).

Rows come from ``reconciler.views.view``; stale and failed rows are drawn in red so they
stand out, rollouts in progress in yellow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from reconciler.views.timefmt import ago, to_unix
from reconciler.views.view import (
    AuditRow,
    NodeRow,
    ReleaseRow,
    Tone,
    WorkloadCell,
    audit_rows,
    health_tone,
    node_rows,
    release_rows,
    summary,
)

STYLES: Mapping[Tone, str] = {
    "ok": "green",
    "busy": "yellow",
    "bad": "bold red",
    "stale": "bold magenta",
    "muted": "dim",
}


def _workloads(cells: Sequence[WorkloadCell]) -> tuple[Text, Text]:
    versions, phases = Text(), Text()
    for i, w in enumerate(cells):
        if i:
            versions.append("\n")
            phases.append("\n")
        style = STYLES[w.tone]
        if w.converged:
            versions.append(f"{w.name} {w.running}", style=style)
        else:
            versions.append(f"{w.name} {w.running} → {w.desired}", style=style)
        phases.append(w.phase, style=style)
    if not cells:
        versions.append("-", style="dim")
        phases.append("-", style="dim")
    return versions, phases


def nodes_table(rows: Sequence[NodeRow]) -> Table:
    table = Table(title="Nodes", title_justify="left", expand=False)
    for name in ("node", "platform", "accel", "roles", "health", "last seen"):
        table.add_column(name, no_wrap=name != "roles")
    table.add_column("workloads (running → desired)", no_wrap=True)
    table.add_column("phase")
    for r in rows:
        style = STYLES[r.tone]
        versions, phases = _workloads(r.workloads)
        table.add_row(
            Text(r.node, style="bold"),
            r.platform,
            r.accelerator,
            r.roles,
            Text(r.health, style=STYLES[health_tone(r.health)]),
            Text(r.last_seen, style=style if r.tone == "stale" else ""),
            versions,
            phases,
            style="on grey11" if r.tone in ("bad", "stale") else None,
        )
    if not rows:
        table.add_row("(no nodes registered yet)", *[""] * 7)
    return table


def releases_table(rows: Sequence[ReleaseRow]) -> Table:
    table = Table(title="Releases", title_justify="left", expand=False)
    for name in ("agent", "version", "approval", "phase", "batch", "soak left", "reason"):
        table.add_column(name, no_wrap=name not in ("reason", "approval"))
    for r in rows:
        style = STYLES[r.tone]
        table.add_row(
            Text(r.agent, style="bold"),
            r.version,
            r.approval,
            Text(r.phase, style=style),
            r.batch,
            r.soak_left,
            Text(r.reason, style=style if r.tone == "bad" else ""),
            style="on grey11" if r.tone == "bad" else None,
        )
    if not rows:
        table.add_row("(no releases)", *[""] * 6)
    return table


def replicas_table(replicas: Sequence[Mapping[str, Any]], now: float) -> Table:
    """The reconciler replicas on PostgreSQL; the leader runs the reconcile loop."""
    table = Table(title="Reconcilers", title_justify="left", expand=False)
    for name in ("replica", "url", "role", "last seen"):
        table.add_column(name, no_wrap=True)
    for r in replicas:
        leader = bool(r.get("leader"))
        table.add_row(
            Text(str(r.get("name", "-")), style="bold"),
            str(r.get("url", "-")),
            Text("leader", style=STYLES["ok"]) if leader else Text("follower"),
            ago(to_unix(r.get("lastSeen")), now),
        )
    return table


def fleet_view(status: Mapping[str, Any], now: float) -> RenderableType:
    """The whole status screen: a summary line, the nodes table and the releases table
    (and the reconciler replicas, on PostgreSQL)."""
    parts: list[RenderableType] = [
        Text(summary(status), style="bold"),
        nodes_table(node_rows(status, now)),
        releases_table(release_rows(status, now)),
    ]
    replicas = status.get("replicas")
    if isinstance(replicas, list):
        parts.append(replicas_table(replicas, now))
    return Group(*parts)


def audit_table(events: Sequence[object]) -> Table:
    rows: list[AuditRow] = audit_rows(events)
    table = Table(title="Audit log", title_justify="left")
    for name in ("time (UTC)", "event", "release", "node", "revision"):
        table.add_column(name, no_wrap=True)
    table.add_column("what happened")
    for r in rows:
        style = STYLES[r.tone]
        table.add_row(r.time, Text(r.kind, style=style), r.release, r.node, r.revision, r.message)
    if not rows:
        table.add_row("(no events)", "", "", "", "", "")
    return table
