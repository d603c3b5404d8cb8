"""Status reports as agents send them, and the one behaviour every simulated agent shares.

``simulated_workloads(mode, desired, running)`` is what a simulated agent reports for a
desired document: ``"ok"`` converges to it, ``"fail:<workload>"`` fails that workload (and
keeps running what it ran before), ``"unhealthy:<workload>"`` runs it but unhealthy.
``PlanSim`` (pure) and ``HttpAgent`` (over HTTP) both report through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.helpers.fleetdocs import Doc


def workload_report(
    name: str,
    version: str | None,
    *,
    phase: str = "Healthy",
    healthy: bool | None = None,
    desired: str | None = None,
    message: str = "",
    config: str | None = None,
) -> Doc:
    w: Doc = {
        "name": name,
        "version": version,
        "desiredVersion": desired if desired is not None else version,
        "phase": phase,
        "healthy": (phase == "Healthy") if healthy is None else healthy,
    }
    if message:
        w["message"] = message
    if config is not None:
        w["configDigest"] = config
    return w


def report_doc(node: str, workloads: Sequence[Doc], generation: int = 0) -> Doc:
    return {
        "node": node,
        "generation": generation,
        "agentVersion": "0.1.0",
        "workloads": list(workloads),
    }


def converged_report(desired: Mapping[str, Any]) -> Doc:
    """What an agent that converged to ``desired`` (a desired-state document) reports."""
    return report_doc(
        str(desired["node"]),
        [
            workload_report(str(w["name"]), str(w["version"]), config=_config_of(w))
            for w in desired.get("workloads", [])
        ],
        int(desired.get("generation", 0)),
    )


def _config_of(workload: Mapping[str, Any]) -> str | None:
    """The config digest an agent that applied ``workload`` reports (issue 17)."""
    config = workload.get("config")
    return str(config["digest"]) if isinstance(config, Mapping) else None


def failed_report(desired: Mapping[str, Any], name: str, running: str | None, why: str) -> Doc:
    """An agent that failed to bring up ``name`` and flipped back to ``running``."""
    ws = []
    for w in desired.get("workloads", []):
        if w["name"] == name:
            ws.append(
                workload_report(
                    name,
                    running,
                    phase="Failed",
                    healthy=False,
                    desired=str(w["version"]),
                    message=why,
                )
            )
        else:
            ws.append(workload_report(str(w["name"]), str(w["version"])))
    return report_doc(str(desired["node"]), ws, int(desired.get("generation", 0)))


def desired_versions(doc: Mapping[str, Any] | None) -> dict[str, str]:
    """``{workload: version}`` of a desired-state document (empty for None)."""
    if doc is None:
        return {}
    return {str(w["name"]): str(w["version"]) for w in doc.get("workloads", [])}


def simulated_workloads(
    mode: str, desired: Mapping[str, Any], running: dict[str, str]
) -> list[Doc]:
    """The workload entries an agent in ``mode`` reports for ``desired``; updates
    ``running`` (workload -> version) with what it now runs."""
    ws: list[Doc] = []
    for w in desired.get("workloads", []):
        name, version = str(w["name"]), str(w["version"])
        if mode == f"fail:{name}" and running.get(name) != version:
            ws.append(
                workload_report(
                    name,
                    running.get(name),
                    phase="Failed",
                    healthy=False,
                    desired=version,
                    message="health check failed",
                )
            )
            continue
        running[name] = version
        if mode == f"unhealthy:{name}":
            ws.append(workload_report(name, version, phase="Unhealthy"))
        else:
            ws.append(workload_report(name, version, config=_config_of(w)))
    return ws
