"""Failed versions are remembered per node, and transient failures are not version failures.

* A version whose health never passes fails on the node; a real agent restarted on the same
  desired target (even under a new document generation) does not start it again (counted
  from the workload log's start lines) and keeps reporting Failed. A changed
  ``retryGeneration`` (``fleetkeeper rollout retry``) and a new version both clear it.
* A version that passes its proof and then crash-loops is rolled back and remembered too.
* An artifact server that refuses connections for the first seconds after "boot" (the
  node's network is not up yet): the node converges through ``fleetkeeper serve`` without
  the reconciler ever seeing Failed, and the rollout does not halt.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.state import StateDir, write_json
from tests.helpers.agents import AgentProc, make_agent, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.desired import desired_doc, workload_doc
from tests.helpers.fleet import FleetRepo
from tests.helpers.server import RunningServer, start_fleet
from tests.integration.test_agent_converge import running_rig


def _starts(agent: AgentProc, version: str) -> int:
    """How often the agent started ``version`` of hello (the supervisor's start lines)."""
    log = StateDir(agent.state_dir).log_file("hello")
    if not log.exists():
        return 0
    lines = log.read_text(errors="replace").splitlines()
    return sum(1 for ln in lines if ln.startswith("--- ") and f"/versions/{version}/" in ln)


def _reported(agent: AgentProc, version: str, phase: str) -> bool:
    w = agent.workload("hello")
    return w is not None and (w["version"], w["phase"]) == (version, phase)


def test_failed_version_is_remembered_across_restarts_until_new_version_or_retry(
    tmp_path: Path,
) -> None:
    port = free_port()
    arts = {
        "1.0.0": build_program(tmp_path / "dist", "hello", "1.0.0"),
        "1.1.0": build_program(tmp_path / "dist", "hello", "1.1.0", unhealthy=True),
        "1.2.0": build_program(tmp_path / "dist", "hello", "1.2.0"),
    }

    def entry(version: str, **extra: Any) -> dict[str, Any]:
        art = arts[version]
        return {**workload_doc("hello", version, art, art.path.as_uri(), port, timeout=2), **extra}

    # No reconciler: the agent runs from the desired document stored in its state dir,
    # which the test writes between agent runs (each start is an agent restart).
    dead = f"http://127.0.0.1:{free_port()}"
    agent = make_agent(tmp_path, "node-f", dead, "t" * 32)
    generation = 0

    def run_with(w: dict[str, Any], until: str, version: str) -> None:
        nonlocal generation
        generation += 1
        document = desired_doc("node-f", generation, [w])
        write_json(agent.state_dir / "desired.json", {"document": document, "etag": None})
        agent.start()
        # the last run's status.json may already say so: wait for this run to be up, or the
        # agent.stop() below could come before its signal handlers
        agent.wait_started()
        agent.wait_for(lambda a: _reported(a, version, until), what=f"{version} {until}")

    try:
        run_with(entry("1.0.0"), "Healthy", "1.0.0")
        assert agent.stop() == 0

        run_with(entry("1.1.0"), "Failed", "1.0.0")  # 1.1.0 failed, rolled back to 1.0.0
        assert _starts(agent, "1.1.0") == 1
        message = agent.workload("hello")["message"]  # type: ignore[index]
        assert "1.1.0 failed: health did not pass" in message, message
        assert agent.stop() == 0
        failed = (agent.state_dir / "failed.json").read_text()
        assert '"1.1.0"' in failed

        # Restarted, and under a new generation of the document (something else for the
        # node changed): the same target is not tried again, the report still says why.
        run_with(entry("1.1.0"), "Failed", "1.0.0")
        time.sleep(2.5)  # longer than the health timeout: a second attempt would show
        assert _starts(agent, "1.1.0") == 1, agent.logs()
        w = agent.workload("hello")
        assert w is not None and (w["phase"], w["version"]) == ("Failed", "1.0.0")
        assert "1.1.0 failed: health did not pass" in w["message"]
        assert agent.stop() == 0

        # fleetkeeper rollout retry: the reconciler bumps retryGeneration -> one new attempt
        run_with(entry("1.1.0", retryGeneration=1), "Failed", "1.0.0")
        agent.wait_for(lambda a: _starts(a, "1.1.0") == 2, what="the retried attempt")
        time.sleep(2.5)
        assert _starts(agent, "1.1.0") == 2  # once per retry, not again and again
        assert agent.stop() == 0

        # a new version clears what was remembered
        run_with(entry("1.2.0", retryGeneration=1), "Healthy", "1.2.0")
        assert _starts(agent, "1.2.0") == 1
        assert "hello" not in (agent.state_dir / "failed.json").read_text()
    finally:
        agent.stop()
        agent.kill_workloads()


NODES = ("node-a", "node-b")
BOOT = 6.0  # seconds during which the artifact server refuses connections


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[FleetRepo, RunningServer]]:
    repo, server, _ = start_fleet(
        tmp_path, NODES, extra_config={"listen": f"127.0.0.1:{free_port()}"}
    )
    try:
        yield repo, server
    finally:
        server.stop()


def test_artifact_server_down_after_boot_is_retried_never_failed(
    tmp_path: Path, lab: tuple[FleetRepo, RunningServer]
) -> None:
    repo, server = lab
    dist = tmp_path / "dist"
    art = build_program(dist, "hello", "1.0.0")
    port = free_port()  # nothing listens here yet: connection refused
    url = f"http://127.0.0.1:{port}/{art.path.name}"
    doc = hello_release("1.0.0", art, url)
    doc["rollout"].update({"batchSize": 2, "timeoutSeconds": 120})
    repo.change({"releases/hello/1.0.0.yaml": doc}, "release hello 1.0.0")
    seen: set[tuple[str, str]] = set()
    retrying: dict[str, str] = {}
    with running_agents(tmp_path / "agents", server.url, server.bootstrap_token, NODES) as agents:
        booted = time.monotonic() + BOOT
        artifacts: ArtifactServer | None = None
        try:
            deadline = time.monotonic() + BOOT + 90
            while time.monotonic() < deadline:
                # "boots" once BOOT s passed and every node has been told to retry
                up = time.monotonic() >= booted and set(retrying) == set(NODES)
                if artifacts is None and up:
                    artifacts = ArtifactServer(dist, port=port).__enter__()
                rows = {n["node"]: n for n in server.fleet()["nodes"]}
                for n, row in rows.items():
                    for w in row["workloads"]:
                        seen.add((n, str(w.get("phase"))))
                        if "retrying in" in str(w.get("message", "")):
                            retrying[n] = str(w["message"])
                healthy = [
                    n
                    for n, row in rows.items()
                    if any(w["running"] == "1.0.0" and w.get("healthy") for w in row["workloads"])
                ]
                if len(healthy) == len(NODES):
                    break
                time.sleep(0.2)
            else:
                raise AssertionError(
                    f"not converged: {seen} {retrying} {[a.report() for a in agents]}"
                )
            assert artifacts is not None and artifacts.requests[art.path.name] == len(NODES)
        finally:
            if artifacts is not None:
                artifacts.__exit__(None, None, None)
        # While the server was down the reconciler heard "Downloading, retrying", never Failed
        assert not [s for s in seen if s[1] in ("Failed", "RolledBack")], seen
        assert set(retrying) == set(NODES), retrying
        assert all("connection refused" in m.lower() for m in retrying.values()), retrying
        assert (NODES[0], "Downloading") in seen
        for a in agents:
            failed = a.state_dir / "failed.json"
            assert not failed.exists() or "hello" not in failed.read_text()
        # ... and its audit log: the rollout succeeded, it never halted. Asked while the
        # agents still run: once they stop, their nodes go stale after the heartbeat TTL,
        # and a pass that had not recorded the success yet (a loaded machine) never would.
        kinds: list[str] = []
        deadline = time.monotonic() + 30
        while "succeeded" not in kinds and time.monotonic() < deadline:
            with server.admin() as c:
                events = c.get("/v1/audit").json()["events"]
            kinds = [e["kind"] for e in events if e.get("release") == "hello"]
            time.sleep(0.2)
        assert "halted" not in kinds and "succeeded" in kinds, events


def test_a_crash_loop_after_the_proof_is_a_version_failure(tmp_path: Path) -> None:
    """1.1.0 passes its proof, then exits after 1.5 s, again and again: once the supervisor
    has seen 3 quick exits in a row, the next converge pass rolls back to 1.0.0 and
    remembers 1.1.0 as failed."""
    with running_rig(tmp_path) as rig:
        good, bad = rig.build("1.0.0"), rig.build("1.1.0", crash_after=1.5)
        assert rig.converge(rig.doc("1.0.0", good)).ok
        w = rig.doc("1.1.0", bad)
        assert rig.converge(w).ok  # proven: healthy within its first 1.5 s
        deadline = time.monotonic() + 30
        while rig.sup.crash_count("hello") < 3 and time.monotonic() < deadline:
            rig.sup.tick()  # what the agent's monitor thread does
            time.sleep(0.05)
        assert rig.sup.crash_count("hello") >= 3
        out = rig.converge(w, same_doc=True)  # the next resync pass
        assert not out.ok and out.phase == "Failed", out.message
        assert "1.1.0 failed: crash loop (3 exits in a row" in out.message, out.message
        assert "rolled back to 1.0.0" in out.message
        assert rig.current() == "1.0.0" and rig.served_version() == "hello 1.0.0"
        remembered = rig.conv.ledger.get("hello")
        assert remembered is not None and remembered.version == "1.1.0"
        # remembered: the same target again is not started again
        pid = rig.sup.running("hello")
        again = rig.converge(w)
        assert again.phase == "Failed" and rig.sup.running("hello") == pid


def test_the_agent_rolls_a_crash_loop_back_without_waiting_for_a_resync(
    tmp_path: Path,
) -> None:
    port = free_port()
    good = build_program(tmp_path / "dist", "hello", "1.0.0")
    bad = build_program(tmp_path / "dist", "hello", "1.1.0", crash_after=1.5)
    dead = f"http://127.0.0.1:{free_port()}"
    # resyncSeconds far away: only the crash loop itself can wake the converge pass
    agent = make_agent(tmp_path, "node-c", dead, "t" * 32, resyncSeconds=600)
    try:
        for generation, art, version in ((1, good, "1.0.0"), (2, bad, "1.1.0")):
            w = workload_doc("hello", version, art, art.path.as_uri(), port)
            document = desired_doc("node-c", generation, [w])
            write_json(agent.state_dir / "desired.json", {"document": document, "etag": None})
            agent.start()
            agent.wait_for(lambda a, v=version: _reported(a, v, "Healthy"), what=f"{version}")
            if version == "1.0.0":
                assert agent.stop() == 0
        began = time.monotonic()
        agent.wait_for(lambda a: _reported(a, "1.0.0", "Failed"), what="crash loop", timeout=40)
        assert time.monotonic() - began < 30
        message = agent.workload("hello")["message"]  # type: ignore[index]
        assert "1.1.0 failed: crash loop" in message and "rolled back to 1.0.0" in message
        assert _starts(agent, "1.1.0") >= 3
    finally:
        agent.stop()
        agent.kill_workloads()
