"""rollout.spreadSeconds with real agents (subprocesses) against ``fleetkeeper serve``: each
agent keeps reporting while it waits for its ``notBefore``, and fetches only after it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.fleet import FleetRepo
from tests.helpers.server import RunningServer, start_fleet

NODES = ("node-a", "node-b", "node-c")
SPREAD = 20


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[FleetRepo, RunningServer, ArtifactServer]]:
    repo, server, _ = start_fleet(
        tmp_path, NODES, extra_config={"listen": f"127.0.0.1:{free_port()}"}
    )
    (tmp_path / "dist").mkdir()
    artifacts = ArtifactServer(tmp_path / "dist").__enter__()
    try:
        yield repo, server, artifacts
    finally:
        artifacts.__exit__(None, None, None)
        server.stop()


def _entry(agent: AgentProc) -> dict[str, Any] | None:
    try:
        doc = json.loads((agent.state_dir / "desired.json").read_text())["document"]
    except (OSError, ValueError, KeyError):
        return None
    return next((w for w in doc["workloads"] if w["name"] == "hello"), None)


def _unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _roll_out(
    version: str,
    tmp_path: Path,
    lab: tuple[FleetRepo, RunningServer, ArtifactServer],
    agents: list[AgentProc],
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Merge ``version`` with a spread; wait until every node runs it. (notBefore per node,
    when the reconciler first saw each node Pending-waiting, the artifact's fetch times)."""
    repo, server, artifacts = lab
    art = build_program(tmp_path / "dist", "hello", version)
    doc = hello_release(version, art, artifacts.url(art.path.name))
    doc["rollout"].update({"batchSize": 3, "spreadSeconds": SPREAD, "timeoutSeconds": 120})
    repo.change({f"releases/hello/{version}.yaml": doc}, f"release hello {version} spread")
    seen_waiting: dict[str, float] = {}
    deadline = time.monotonic() + SPREAD + 60
    while time.monotonic() < deadline:
        rows = {n["node"]: n for n in server.fleet()["nodes"]}
        for n, row in rows.items():
            for w in row["workloads"]:
                if w["phase"] == "Pending" and "waiting until" in w.get("message", ""):
                    seen_waiting.setdefault(n, time.time())
        healthy = [
            n
            for n, row in rows.items()
            if any(w["running"] == version and w.get("healthy") for w in row["workloads"])
        ]
        if len(healthy) == len(NODES):
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"{version} not converged: {[a.report() for a in agents]}")
    not_before = {}
    for a in agents:
        e = _entry(a)
        assert e is not None and e["version"] == version, e
        not_before[a.node] = _unix(e["notBefore"])
    fetches = sorted(t for name, t in artifacts.times if name == art.path.name)
    return not_before, seen_waiting, fetches


def test_agents_wait_for_not_before_and_keep_reporting(
    tmp_path: Path, lab: tuple[FleetRepo, RunningServer, ArtifactServer]
) -> None:
    _, server, _ = lab
    with running_agents(tmp_path / "agents", server.url, server.bootstrap_token, NODES) as agents:
        # The delays are a hash of (node, rollout): a new version reshuffles them. Roll out
        # new versions until one makes a node wait a few seconds (almost always the first).
        for version in ("1.0.0", "1.0.1", "1.0.2"):
            not_before, seen_waiting, fetches = _roll_out(version, tmp_path, lab, agents)
            nbs = sorted(not_before.values())
            assert nbs[-1] - nbs[0] <= SPREAD  # all within the spread
            assert len(fetches) == len(NODES), fetches
            # each agent fetched after its own notBefore: the k-th fetch after the k-th one
            assert all(f >= nb for f, nb in zip(fetches, nbs, strict=True)), (fetches, nbs)
            waited = [n for n, nb in not_before.items() if nb > fetches[0] + 2]
            if waited:
                break
        assert waited, "no rollout made a node wait"
        # ... and while it waited its reports kept coming, saying so
        for n in waited:
            assert n in seen_waiting, (n, seen_waiting)
            assert seen_waiting[n] < not_before[n] + 1
