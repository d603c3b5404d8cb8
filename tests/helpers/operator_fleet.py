"""A small real fleet for the operators' view tests (status, audit, dashboard).

A fleet repo with three nodes, the real reconciler (``tests.helpers.server``), three real
agents (``tests.helpers.agents``) and locally served programs (``tests.helpers.artifacts``)::

    with operated_fleet(tmp_path) as fleet:
        fleet.release("1.0.0")                  # merged with --no-ff: approved
        fleet.wait_release("1.0.0", "Succeeded")
        fleet.release("1.1.0", bad_sha256=True) # halts on the canary

The workload is ``hello``; each node gets its own free port through its ``port`` label.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program
from tests.helpers.fleet import FleetRepo, fleet_doc, fleet_files, node_doc, release_doc
from tests.helpers.server import RunningServer, running_server

WORKLOAD = "hello"
NODES = ("node-a", "node-b", "node-c")


@dataclass
class OperatedFleet:
    tmp: Path
    repo: FleetRepo
    server: RunningServer
    artifacts: ArtifactServer
    agents: list[AgentProc]
    soak: int

    def release_doc(self, version: str, *, bad_sha256: bool = False, **rollout: Any) -> Any:
        art = build_program(self.tmp / "dist", WORKLOAD, version)
        doc = release_doc(WORKLOAD, version, platforms=("linux/amd64",))
        artifact = art.artifact_doc(self.artifacts.url(art.path.name))
        if bad_sha256:
            artifact["sha256"] = "0" * 64
        doc["artifacts"] = [artifact]
        doc["health"] = {"http": "http://127.0.0.1:${node.labels.port}/healthz"}
        doc["health"]["timeoutSeconds"] = 10
        settings = {"batchSize": 2, "canary": [NODES[0]], "soakSeconds": self.soak}
        doc["rollout"] = {**doc["rollout"], **settings, "timeoutSeconds": 30, **rollout}
        return doc

    def release(self, version: str, **kw: Any) -> str:
        """Merge releases/hello/<version>.yaml with --no-ff; returns the merge sha."""
        doc = self.release_doc(version, **kw)
        return self.repo.change({f"releases/{WORKLOAD}/{version}.yaml": doc}, f"hello {version}")

    def direct_push(self, version: str) -> str:
        """The same kind of change committed straight onto main (refused under merged-pr)."""
        doc = self.release_doc(version)
        return self.repo.direct_commit(
            {f"releases/{WORKLOAD}/{version}.yaml": doc}, f"hello {version}, no PR"
        )

    def release_row(self, status: dict[str, Any] | None = None) -> dict[str, Any] | None:
        rows = [r for r in (status or self.server.fleet())["releases"] if r["agent"] == WORKLOAD]
        return rows[-1] if rows else None

    @staticmethod
    def _everywhere(status: dict[str, Any], version: str) -> bool:
        running = [
            w["running"] for n in status["nodes"] for w in n["workloads"] if w["name"] == WORKLOAD
        ]
        return len(running) == len(NODES) and all(v == version for v in running)

    def wait_release(self, version: str, phase: str, timeout: float = 40.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.server.fleet()
            row = self.release_row(status)
            matches = row is not None and (row["version"], row["phase"]) == (version, phase)
            if matches and (phase != "Succeeded" or self._everywhere(status, version)):
                return status
            time.sleep(0.2)
        raise AssertionError(f"hello {version} not {phase} after {timeout}s: {status}")


@contextlib.contextmanager
def operated_fleet(
    tmp: Path, *, soak: int = 1, ttl: int = 90, extra_config: dict[str, Any] | None = None
) -> Iterator[OperatedFleet]:
    nodes = [node_doc(n, labels={"port": str(free_port())}) for n in NODES]
    repo = FleetRepo.create(tmp / "fleet", fleet_files(nodes, [], fleet_doc()))
    started: list[AgentProc] = []
    try:
        with (
            ArtifactServer(tmp / "dist") as artifacts,
            running_server(
                tmp / "server",
                repo=repo,
                extra_config={
                    "pollIntervalSeconds": 0.5,
                    "heartbeatTTLSeconds": ttl,
                    **(extra_config or {}),
                },
            ) as server,
            running_agents(tmp / "agents", server.url, server.bootstrap_token, NODES) as agents,
        ):
            started = agents
            try:
                yield OperatedFleet(tmp, repo, server, artifacts, agents, soak)
            finally:
                # signal every agent at once: stopping them one by one costs seconds each
                for a in agents:
                    if a.process is not None and a.process.poll() is None:
                        a.process.send_signal(signal.SIGTERM)
    finally:
        for a in started:  # never leave an agent behind, even if its teardown failed
            if a.process is not None and a.process.poll() is None:
                a.process.kill()
                a.process.wait(10)
