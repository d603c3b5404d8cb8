"""Status reports (schema/status-report.schema.json) built from observations (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Phase = Literal[
    "Pending",
    "Downloading",
    "Verifying",
    "Staged",
    "Restarting",
    "Healthy",
    "Unhealthy",
    "Failed",
    "RolledBack",
    "Stopped",
]
IN_FLIGHT: frozenset[str] = frozenset({"Downloading", "Verifying", "Staged", "Restarting"})
STICKY: frozenset[str] = frozenset({"Failed", "RolledBack"})
# set by the converge step while it waits for a workload's ``notBefore``
WAITING: frozenset[str] = frozenset({"Pending"})


@dataclass(frozen=True)
class Observed:
    """What is true about one workload right now, from the OS and the install root."""

    name: str
    desired_version: str | None
    version: str | None  # from the running process, never from intent
    pid: int | None
    started_at: float | None
    current: str | None
    sha256: str | None
    healthy: bool
    health_message: str
    # digest of the config directory in use (issue 17); None: no config files
    config_digest: str | None = None


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def decide_phase(stored: str | None, observed: Observed) -> str:
    """Phase to report: in-flight and sticky phases from the converge step win; otherwise
    what the process shows (Healthy / Unhealthy / Stopped)."""
    if stored in IN_FLIGHT or stored in STICKY or stored in WAITING:
        return stored
    if observed.pid is None:
        return "Stopped"
    return "Healthy" if observed.healthy else "Unhealthy"


def workload_entry(observed: Observed, phase: str, message: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": observed.name,
        "version": observed.version,
        "desiredVersion": observed.desired_version,
        "phase": phase,
        "healthy": observed.healthy,
        "pid": observed.pid,
        "startedAt": rfc3339(observed.started_at),
        "current": observed.current,
        "sha256": observed.sha256,
    }
    if observed.config_digest is not None:
        entry["configDigest"] = observed.config_digest
    text = message or observed.health_message
    if text:
        entry["message"] = text[:4096]
    return entry


def desired_entry(
    document: Mapping[str, Any] | None,
    *,
    expired: bool,
    refused: str | None,
    trust: str | None,
) -> dict[str, Any]:
    """The report's ``desired`` block: how the agent judged what it was served.

    A refusal wins over expiry (it is the newer news); either way the node keeps running
    its last good state.
    """
    entry: dict[str, Any] = {"expiresAt": (document or {}).get("expiresAt")}
    if refused:
        entry.update(phase="Refused", message=refused[:4096])
    elif expired:
        entry.update(
            phase="DesiredExpired",
            message="the desired state expired: running the last good state, acting on "
            "nothing until the reconciler serves a fresh signature",
        )
    else:
        entry["phase"] = "Accepted" if document is not None else "None"
    if trust is not None:
        entry["trust"] = trust
    return entry


def build_report(
    node: str,
    generation: int,
    agent_version: str,
    entries: Sequence[Mapping[str, Any]],
    desired: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "node": node,
        "generation": generation,
        "agentVersion": agent_version,
        "workloads": [dict(e) for e in entries],
    }
    if desired is not None:
        report["desired"] = dict(desired)
    return report
