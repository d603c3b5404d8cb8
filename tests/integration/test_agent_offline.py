"""The agent without any reconciler: it runs from its stored desired state, and
``fleetkeeper-agent rollback`` works with no daemon running."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from agent.state import write_json
from tests.helpers.agents import make_agent
from tests.helpers.artifact_server import free_port
from tests.helpers.artifacts import build_program
from tests.helpers.desired import desired_doc, workload_doc


def test_offline_agent_and_rollback_without_daemon(tmp_path: Path) -> None:
    port = free_port()
    arts = {v: build_program(tmp_path / "dist", "hello", v) for v in ("1.0.0", "1.1.0")}
    docs = {
        v: workload_doc("hello", v, a, a.path.resolve().as_uri(), port) for v, a in arts.items()
    }
    # Two unreachable reconcilers: tried in order, backing off, never blocking the node.
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    agent = make_agent(tmp_path, "node-o", dead, "t" * 32)
    desired = agent.state_dir / "desired.json"

    def serves() -> str:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text.strip()

    def reported(version: str, phase: str) -> bool:
        w = agent.workload("hello")
        return w is not None and (w["version"], w["phase"]) == (version, phase)

    try:
        for gen, v in enumerate(("1.0.0", "1.1.0"), start=1):
            write_json(desired, {"document": desired_doc("node-o", gen, [docs[v]]), "etag": None})
            agent.start()
            agent.wait_for(lambda a, v=v: reported(v, "Healthy"), what=f"{v} healthy")
            # converging from the stored document can beat the first (failed) poll: await it
            agent.wait_for(lambda a: "poll failed" in a.logs(), what="a failed poll")
            assert agent.stop() == 0
        assert "poll failed" in agent.logs()
        assert serves() == "hello 1.1.0"  # the workload outlives the agent

        out = agent.cli("rollback", "hello")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "from 1.1.0 to 1.0.0" in out.stdout
        assert serves() == "hello 1.0.0"

        # The daemon comes back: it adopts the rolled-back process and does not re-apply 1.1.0.
        agent.start()
        agent.wait_for(lambda a: reported("1.0.0", "RolledBack"), what="RolledBack report")
        pid = agent.workload("hello")["pid"]  # type: ignore[index]
        time.sleep(1.0)
        assert serves() == "hello 1.0.0"
        assert agent.workload("hello")["pid"] == pid  # type: ignore[index]
        assert "adopted hello" in agent.logs()

        # A second rollback goes through the running daemon and swaps back.
        out = agent.cli("rollback", "hello")
        assert out.returncode == 0, out.stdout + out.stderr
        assert serves() == "hello 1.1.0"
        # Back on the desired version: an ordinary healthy report, nothing held back.
        agent.wait_for(lambda a: reported("1.1.0", "Healthy"), what="1.1.0 healthy again")
    finally:
        agent.stop()
        agent.kill_workloads()
