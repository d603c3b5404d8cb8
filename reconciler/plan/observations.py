"""What nodes report, as values the planner can judge. Pure.

"Target version running" means: the node's last report lists the workload with
``version == target``, ``healthy: true`` and phase ``Healthy``, and the report is within
the heartbeat TTL. A report older than the TTL makes the node ``Stale``: never healthy,
never converged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.spec import JSON


@dataclass(frozen=True)
class WorkloadObservation:
    name: str
    version: str | None
    desired_version: str | None
    phase: str
    healthy: bool
    message: str = ""
    config_digest: str | None = None  # the config directory in use (issue 17)


@dataclass(frozen=True)
class NodeReport:
    """A node's last status report and when the reconciler received it (unix seconds)."""

    node: str
    received_at: float
    workloads: Mapping[str, WorkloadObservation]
    # how the agent judged the desired state it was served (its report's ``desired`` block):
    # "Accepted", "Refused", "DesiredExpired", "None"; "" from an agent that does not say
    desired_phase: str = ""
    desired_message: str = ""
    generation: int = 0  # of the last desired-state document the agent acted on

    @classmethod
    def from_json(cls, node: str, doc: Mapping[str, JSON], received_at: float) -> NodeReport:
        out: dict[str, WorkloadObservation] = {}
        items = doc.get("workloads")
        for w in items if isinstance(items, list) else []:
            if not isinstance(w, dict) or not isinstance(w.get("name"), str):
                continue
            version, desired, message = w.get("version"), w.get("desiredVersion"), w.get("message")
            config = w.get("configDigest")
            name = str(w["name"])
            out[name] = WorkloadObservation(
                name=name,
                version=version if isinstance(version, str) else None,
                desired_version=desired if isinstance(desired, str) else None,
                phase=str(w.get("phase", "")),
                healthy=w.get("healthy") is True,
                message=message if isinstance(message, str) else "",
                config_digest=config if isinstance(config, str) else None,
            )
        judged = doc.get("desired")
        judged = judged if isinstance(judged, dict) else {}
        phase, why = judged.get("phase"), judged.get("message")
        gen = doc.get("generation")
        return cls(
            node=node,
            received_at=received_at,
            workloads=out,
            desired_phase=phase if isinstance(phase, str) else "",
            desired_message=why if isinstance(why, str) else "",
            generation=gen if isinstance(gen, int) and not isinstance(gen, bool) else 0,
        )

    def fresh(self, now: float, ttl: float) -> bool:
        return now - self.received_at <= ttl

    def healthy(self) -> bool:
        """Every reported workload is healthy (a node running nothing is healthy)."""
        return all(w.healthy for w in self.workloads.values())


def is_stale(report: NodeReport | None, now: float, ttl: float) -> bool:
    return report is None or not report.fresh(now, ttl)


def runs(
    report: NodeReport | None,
    name: str,
    version: str,
    now: float,
    ttl: float,
    config: str | None = None,
) -> bool:
    """The node's last report shows ``name`` at ``version`` running healthy, and is fresh;
    with ``config`` (a release's config digest), running with that config: the target of
    a rollout is (version, config digest), so a config-only change is rolled out too."""
    if report is None or not report.fresh(now, ttl):
        return False
    w = report.workloads.get(name)
    if w is None or w.version != version or not w.healthy or w.phase != "Healthy":
        return False
    return config is None or w.config_digest == config


def failed(report: NodeReport | None, name: str, version: str) -> WorkloadObservation | None:
    """The observation when the node reports ``Failed`` for ``version`` of ``name``."""
    if report is None:
        return None
    w = report.workloads.get(name)
    if w is None or w.phase != "Failed":
        return None
    return w if version in (w.desired_version, w.version) else None
