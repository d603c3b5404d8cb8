"""Rollout controls across replicas: ``fleetkeeper rollout pause|resume`` sent to a
follower steer the rollout the leader runs, and a new leader inherits the pause.

Two real ``fleetkeeper serve`` on one real PostgreSQL, three real agents listing both
servers, a real program rolled out as a canary and one batch of two. The replicas resync
only every 60 s, so what moves the leader in time is the control itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agents import running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.fleet import fleet_doc, node_doc
from tests.helpers.fleetrepo import FleetRepo
from tests.helpers.replicas import ReplicaSet, replica_set

NODES = ("node-a", "node-b", "node-c")
SOAK = 8  # the canary's soak: the pause must land inside it, on a loaded 2-core machine
# A resume must reach the leader through the replica set, not at its next resync, nor
# at the next re-read of the reports (every 5 s): well under that.
RESUME_SECONDS = 3.0


@pytest.fixture
def fleet_repo(tmp_path: Path) -> FleetRepo:
    files: dict[str, Any] = {"fleet.yaml": fleet_doc()}
    for n in NODES:
        files[f"nodes/{n}.yaml"] = node_doc(n, labels={"port": str(free_port())})
    return FleetRepo.create(tmp_path / "fleet", files)


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[ArtifactServer]:
    (tmp_path / "dist").mkdir()
    with ArtifactServer(tmp_path / "dist") as server:
        yield server


def rollout(rs: ReplicaSet, i: int, *args: str) -> str:
    """``fleetkeeper rollout ARGS --server <replica i>``; its output (exit 0 asserted)."""
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "rollout", *args, "--server", rs.urls[i]],
        capture_output=True,
        text=True,
        env={**os.environ, "FLEETKEEPER_TOKEN": rs.admin_token},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def desired(rs: ReplicaSet, i: int) -> dict[str, str | None]:
    """hello's desired version per node, as replica ``i`` serves the fleet status."""
    return {
        n["node"]: next((w["desired"] for w in n["workloads"] if w["name"] == "hello"), None)
        for n in rs.fleet(i)["nodes"]
    }


def row(rs: ReplicaSet, i: int) -> dict[str, Any]:
    rows = [r for r in rs.fleet(i)["releases"] if r["agent"] == "hello" and "paused" in r]
    assert len(rows) == 1, rows
    return rows[0]


def wait_desired(rs: ReplicaSet, i: int, node: str, timeout: float) -> float:
    """Seconds until replica ``i`` shows ``node`` desired on 1.0.0."""
    started = time.monotonic()
    while desired(rs, i).get(node) != "1.0.0":
        assert time.monotonic() - started < timeout, f"{desired(rs, i)}\n{rs.tail()}"
        time.sleep(0.05)
    return time.monotonic() - started


def test_pause_and_resume_on_a_follower_steer_the_leaders_rollout(
    tmp_path: Path, fleet_repo: FleetRepo, artifacts: ArtifactServer, postgres_url: str
) -> None:
    extra = {"heartbeatTTLSeconds": 30, "pollIntervalSeconds": 60}
    with (
        replica_set(tmp_path / "rs", fleet_repo, postgres_url, 2, extra_config=extra) as rs,
        running_agents(tmp_path / "agents", rs.urls, rs.bootstrap_token, NODES) as agents,
    ):
        leader = rs.wait_leader()
        follower = 1 - leader
        art = build_program(tmp_path / "dist", "hello", "1.0.0")
        doc = hello_release("1.0.0", art, artifacts.url(art.path.name))
        doc["rollout"].update({"canary": ["node-a"], "batchSize": 2, "soakSeconds": SOAK})
        fleet_repo.change({"releases/hello/1.0.0.yaml": doc}, "hello 1.0.0")

        # the leader starts the canary; the pause goes to the follower while it soaks
        wait_desired(rs, follower, "node-a", timeout=60)
        out = rollout(rs, follower, "pause", "hello", "--reason", "change freeze", "--by", "alice")
        assert "paused the rollout of hello 1.0.0" in out
        agents[0].wait_for(
            lambda a: a.running("hello") == "1.0.0" and a.phase("hello") == "Healthy",
            what="the canary healthy",
            timeout=60,
        )
        time.sleep(SOAK + 2)  # the canary's soak is over: batch 2 would start now
        for i in (leader, follower):
            assert desired(rs, i) == {"node-a": "1.0.0", "node-b": None, "node-c": None}
            assert row(rs, i)["reason"] == "Paused by alice: change freeze", row(rs, i)

        # a new leader reads the pause from the store and honours it
        rs.kill(leader)
        new = rs.wait_leader(timeout=2 * 2)
        assert new == follower
        time.sleep(3)  # several passes of the new leader's first term
        assert desired(rs, new) == {"node-a": "1.0.0", "node-b": None, "node-c": None}
        assert row(rs, new)["paused"]["by"] == "alice"

        # the killed one comes back as a follower; resume there starts batch 2 at once
        rs.start(leader)
        follower = leader
        assert rs.leads(follower) is False
        started = time.monotonic()
        out = rollout(rs, follower, "resume", "hello", "--reason", "freeze over", "--by", "alice")
        assert "resumed the rollout of hello 1.0.0" in out
        wait_desired(rs, new, "node-b", timeout=30)
        took = time.monotonic() - started
        print(f"resume on the follower -> batch 2 given by the leader: {took:.2f}s")
        assert took < RESUME_SECONDS, f"{took:.2f}s: the leader waited for a resync\n{rs.tail()}"
        for a in agents:
            a.wait_for(lambda a: a.running("hello") == "1.0.0", what="1.0.0 running", timeout=60)

        # each control once in the audit; the rollout started once and ran each batch
        # once, across the change of leader
        events = rs.audit(follower)
        controls = [
            (e["kind"], e["details"]["by"], e["details"]["reason"])
            for e in events
            if e["kind"] in ("rollout-pause", "rollout-resume")
        ]
        assert controls == [
            ("rollout-pause", "alice", "change freeze"),
            ("rollout-resume", "alice", "freeze over"),
        ]
        steps = [
            (e["kind"], e["details"].get("batch"))
            for e in events
            if e["release"] == "hello" and e["kind"] in ("rollout-started", "batch-started")
        ]
        assert steps == [("rollout-started", None), ("batch-started", 1), ("batch-started", 2)]
