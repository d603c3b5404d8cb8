"""Real agents (subprocesses) against the real reconciler (``fleetkeeper serve``) on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import free_port
from tests.helpers.artifacts import Artifact, build_program, hello_release
from tests.helpers.lab import FleetLab, fleet_lab
from tests.helpers.server import restart

NODES = ("node-a", "node-b", "node-c")


class Lab(FleetLab):
    def merge_release(self, version: str, **behaviour: Any) -> Artifact:
        art = build_program(self.tmp / "dist", "hello", version, **behaviour)
        doc = hello_release(version, art, self.url(art))
        self.repo.change({f"releases/hello/{version}.yaml": doc}, f"release hello {version}")
        return art

    def served(self, node: str) -> str | None:
        r = self.workload_get(node, "/healthz")
        return None if r is None else r.text.strip()

    def fleet_node(self, node: str) -> dict[str, Any]:
        for n in self.server.fleet()["nodes"]:
            if n["node"] == node:
                return dict(n)
        raise AssertionError(f"{node} not in the fleet view")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    listen = f"127.0.0.1:{free_port()}"
    extra = {"heartbeatTTLSeconds": 3, "listen": listen}
    with fleet_lab(Lab, tmp_path, NODES, extra_config=extra) as lab:
        yield lab


def _healthy_at(agent: AgentProc, version: str) -> bool:
    w = agent.workload("hello")
    return bool(w and w["phase"] == "Healthy" and w["version"] == version and w["healthy"])


def _desired_version(agent: AgentProc) -> str | None:
    import json

    try:
        doc = json.loads((agent.state_dir / "desired.json").read_text())["document"]
    except (OSError, ValueError, KeyError):
        return None
    return next((w["version"] for w in doc["workloads"] if w["name"] == "hello"), None)


def test_rollout_one_agent_at_a_time_rollback_by_hand_and_halt_on_failure(lab: Lab) -> None:
    s = lab.server
    # The first server URL is dead: agents fall through to the next one, in order.
    servers = [f"http://127.0.0.1:{free_port()}", s.url]
    with running_agents(lab.tmp / "agents", servers, s.bootstrap_token, NODES) as agents:
        for version in ("1.0.0", "1.1.0"):
            lab.merge_release(version)
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                targeted = [a.node for a in agents if _desired_version(a) == version]
                healthy = [a.node for a in agents if _healthy_at(a, version)]
                # Batch size 1: a node is handed the new version only when the ones before it
                # report it healthy.
                assert len(targeted) <= len(healthy) + 1, (targeted, healthy)
                if len(healthy) == len(NODES):
                    break
                time.sleep(0.03)
            else:
                raise AssertionError(f"{version} did not converge: {[a.report() for a in agents]}")
            assert all(lab.served(n) == f"hello {version}" for n in NODES)

        # The reconciler sees what the agents observed.
        view = lab.fleet_node("node-a")
        assert view["health"] == "Healthy", view
        assert [(w["name"], w["running"]) for w in view["workloads"]] == [("hello", "1.1.0")]

        # Roll back node-a by hand while its daemon runs: the next report says so.
        a = agents[0]
        before = a.workload("hello")
        assert before is not None
        out = a.cli("rollback", "hello")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "rolled back by hand from 1.1.0 to 1.0.0" in out.stdout
        a.wait_for(
            lambda x: (
                (w := x.workload("hello")) is not None
                and (w["phase"], w["version"], w["desiredVersion"])
                == ("RolledBack", "1.0.0", "1.1.0")
            ),
            what="RolledBack report",
        )
        assert lab.served("node-a") == "hello 1.0.0"
        assert a.current("hello") == "1.0.0"
        after = a.workload("hello")
        assert after is not None and after["pid"] != before["pid"]
        # The daemon does not re-apply the rolled-back target by itself.
        time.sleep(1.5)
        assert lab.served("node-a") == "hello 1.0.0"

        status = a.cli("status")
        assert status.returncode == 0, status.stderr
        assert "hello" in status.stdout and "1.0.0" in status.stdout
        assert "RolledBack" in status.stdout

        # A release that cannot start: the first node reports Failed for 1.2.0 while proving
        # its old version runs again, and the reconciler halts the rollout there.
        lab.merge_release("1.2.0", exit_at_start=True)
        deadline = time.monotonic() + 30
        while True:
            failed = [
                x
                for x in agents
                if (w := x.workload("hello"))
                and (w["phase"], w["desiredVersion"]) == ("Failed", "1.2.0")
            ]
            if failed:
                break
            assert time.monotonic() < deadline, [x.report() for x in agents]
            time.sleep(0.05)
        bad = failed[0]
        w = bad.workload("hello")
        assert w is not None and w["healthy"] and w["version"] in ("1.0.0", "1.1.0")
        assert "exited at start" in w["message"] and "rolled back to" in w["message"]
        assert lab.served(bad.node) == f"hello {w['version']}"
        deadline = time.monotonic() + 15
        while not any(
            r["version"] == "1.2.0" and r["phase"] == "Halted" for r in s.fleet()["releases"]
        ):
            assert time.monotonic() < deadline, s.fleet()["releases"]
            time.sleep(0.1)
        others = [x for x in agents if x is not bad]
        assert all(_desired_version(x) != "1.2.0" for x in others)
        assert all(lab.served(x.node) == f"hello {x.running('hello')}" for x in others)


def test_outage_keeps_workloads_running_and_stale_after_ttl(lab: Lab) -> None:
    s = lab.server
    with running_agents(
        lab.tmp / "agents", s.url, s.bootstrap_token, NODES[:2], start=False
    ) as agents:
        # A node token the reconciler does not know (rotated, or the server's state was
        # lost): the agent gets 401 and registers again with the bootstrap token.
        agents[1].state_dir.mkdir(parents=True)
        (agents[1].state_dir / "node.token").write_text("x" * 40)
        for a in agents:
            a.start()
        lab.merge_release("1.0.0")
        for a in agents:
            a.wait_for(lambda x: _healthy_at(x, "1.0.0"), timeout=40, what="1.0.0 healthy")
        assert "node token refused (401): registering again" in agents[1].logs()
        token = agents[1].state_dir / "node.token"
        assert token.read_text() != "x" * 40 and token.stat().st_mode & 0o777 == 0o600
        pids = {a.node: a.workload("hello")["pid"] for a in agents}  # type: ignore[index]

        # Nothing changes and a 5 s long-poll is pending, yet heartbeats (1 s) keep coming.
        seen = lab.fleet_node(agents[0].node)["lastSeen"]
        time.sleep(2.2)
        assert lab.fleet_node(agents[0].node)["lastSeen"] != seen

        # Reconciler down: nothing changes on the nodes.
        code = lab.server.stop()
        assert code == 0
        time.sleep(2.5)
        for a in agents:
            assert a.alive()
            assert lab.served(a.node) == "hello 1.0.0"
            w = a.workload("hello")
            assert w is not None and w["pid"] == pids[a.node] and w["phase"] == "Healthy"
        assert "status report failed" in agents[0].logs()

        # Back up on the same address: the agents report again.
        lab.server = restart(lab.server)
        started = time.time()

        def seen_since(node: str) -> bool:
            view = lab.fleet_node(node)
            return view["health"] == "Healthy" and view["lastSeen"] is not None

        deadline = time.monotonic() + 15
        while not all(seen_since(a.node) for a in agents):
            assert time.monotonic() < deadline, lab.server.fleet()
            time.sleep(0.1)
        assert time.time() - started < 15

        # An agent that dies goes Stale after the TTL; its workload keeps serving.
        agents[1].kill()
        deadline = time.monotonic() + 15
        while lab.fleet_node(agents[1].node)["health"] != "Stale":
            assert time.monotonic() < deadline, lab.fleet_node(agents[1].node)
            time.sleep(0.2)
        assert lab.fleet_node(agents[0].node)["health"] == "Healthy"
        assert lab.served(agents[1].node) == "hello 1.0.0"
