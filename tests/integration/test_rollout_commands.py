"""``fleetkeeper rollout pause|resume|retry|promote|skip-node`` against a real reconciler,
a real fleet repo and three real agents (``operated_fleet``), each control's audit record
read back from ``GET /v1/audit``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.operator_fleet import NODES, WORKLOAD, OperatedFleet, operated_fleet


def rollout(fleet: OperatedFleet, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETKEEPER_TOKEN": fleet.server.admin_token, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "rollout", *args, "--server", fleet.server.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )


def ok(fleet: OperatedFleet, *args: str) -> str:
    proc = rollout(fleet, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def status_text(fleet: OperatedFleet) -> str:
    env = {**os.environ, "FLEETKEEPER_TOKEN": fleet.server.admin_token, "COLUMNS": "250"}
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "status", "--server", fleet.server.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    return proc.stdout


def desired(status: dict[str, Any]) -> dict[str, str | None]:
    return {
        n["node"]: next((w["desired"] for w in n["workloads"] if w["name"] == WORKLOAD), None)
        for n in status["nodes"]
    }


def live_row(status: dict[str, Any]) -> dict[str, Any]:
    """The row of hello's rollout (not the row of a refused newer tip)."""
    rows = [r for r in status["releases"] if r["agent"] == WORKLOAD and "paused" in r]
    assert len(rows) == 1, status["releases"]
    return rows[0]


def wait_for(fleet: OperatedFleet, what: str, test: Callable[[dict[str, Any]], bool]) -> Any:
    deadline = time.monotonic() + 60
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = fleet.server.fleet()
        if test(live_row(status)):
            return status
        time.sleep(0.2)
    raise AssertionError(f"never {what}: {live_row(status)}")


def control_audit(fleet: OperatedFleet) -> list[dict[str, Any]]:
    with fleet.server.admin() as c:
        events = c.get("/v1/audit").json()["events"]
    kinds = {f"rollout-{a}" for a in ("pause", "resume", "retry", "promote", "skip-node")}
    return [e for e in events if e["kind"] in kinds]


def test_pause_survives_a_new_revision_resume_and_promote_steer_it(tmp_path: Path) -> None:
    with operated_fleet(tmp_path, soak=600) as fleet:
        fleet.release("1.0.0", soakSeconds=0)
        fleet.wait_release("1.0.0", "Succeeded")

        # --reason is required, and must say something
        missing = rollout(fleet, "pause", WORKLOAD)
        assert missing.returncode == 2 and "--reason" in missing.stderr
        blank = rollout(fleet, "pause", WORKLOAD, "--reason", "  ")
        assert blank.returncode == 1 and "--reason must not be empty" in blank.stderr
        unknown = rollout(fleet, "pause", "nope", "--reason", "x")
        assert unknown.returncode == 1 and "no rollout of 'nope'" in unknown.stderr

        # the API says what is wrong, and records nothing
        with fleet.server.admin() as c:
            r = c.post(f"/v1/rollouts/{WORKLOAD}/pause", json={})
            assert r.status_code == 422 and "reason" in r.json()["message"]
            r = c.post(f"/v1/rollouts/{WORKLOAD}/skip-node", json={"reason": "x"})
            assert r.status_code == 422 and "the node to skip is required" in r.text
            r = c.post(f"/v1/rollouts/{WORKLOAD}/pause", json={"reason": "x", "node": "node-a"})
            assert r.status_code == 422 and "only skip-node takes a node" in r.text
            r = c.post(f"/v1/rollouts/{WORKLOAD}/reboot", json={"reason": "x"})
            assert r.status_code == 404 and "unknown rollout action 'reboot'" in r.text
        with fleet.server.client() as anonymous:
            r = anonymous.post(f"/v1/rollouts/{WORKLOAD}/pause", json={"reason": "x"})
            assert r.status_code == 401
        assert control_audit(fleet) == []

        out = ok(fleet, "pause", WORKLOAD, "--reason", "change freeze", "--by", "alice")
        assert "paused the rollout of hello 1.0.0" in out
        again = rollout(fleet, "pause", WORKLOAD, "--reason", "twice")
        assert again.returncode == 1 and "paused already" in again.stderr

        # a new approved revision while paused: its rollout starts, gives nobody 1.1.0
        fleet.release("1.1.0")
        status = wait_for(fleet, "1.1.0 planned", lambda r: r["version"] == "1.1.0")
        time.sleep(2.0)  # several passes (pollIntervalSeconds 0.5) and heartbeats
        status = fleet.server.fleet()
        row = fleet.release_row(status)
        assert row is not None and row["reason"] == "Paused by alice: change freeze"
        assert row["paused"]["by"] == "alice"
        assert desired(status) == {n: "1.0.0" for n in NODES}
        assert "Paused by alice: change freeze" in status_text(fleet)
        # a version pushed without a merge is refused; no control can make it desired
        fleet.direct_push("1.2.0")
        nothing = rollout(fleet, "retry", WORKLOAD, "--reason", "x")
        assert nothing.returncode == 1 and "not halted: nothing to retry" in nothing.stderr

        ok(fleet, "resume", WORKLOAD, "--reason", "freeze over", "--by", "alice")
        wait_for(fleet, "canary soaking", lambda r: r["phase"] == "Soaking")
        ok(fleet, "promote", WORKLOAD, "--reason", "canary fine", "--by", "bob")
        wait_for(
            fleet, "batch 2 soaking", lambda r: r["phase"] == "Soaking" and r["batch"] == "2/2"
        )
        ok(fleet, "promote", WORKLOAD, "--reason", "all fine", "--by", "bob")
        status = wait_for(fleet, "1.1.0 Succeeded", lambda r: r["phase"] == "Succeeded")
        assert live_row(status)["version"] == "1.1.0"
        assert desired(status) == {n: "1.1.0" for n in NODES}  # never 1.2.0
        done = rollout(fleet, "promote", WORKLOAD, "--reason", "x")
        assert done.returncode == 1 and "no running batch" in done.stderr

        audit = control_audit(fleet)
        assert [(e["kind"], e["details"]["by"], e["details"]["reason"]) for e in audit] == [
            ("rollout-pause", "alice", "change freeze"),
            ("rollout-resume", "alice", "freeze over"),
            ("rollout-promote", "bob", "canary fine"),
            ("rollout-promote", "bob", "all fine"),
        ]
        for e in audit:
            assert e["release"] == WORKLOAD and e["details"]["token"] == "admin"
            assert e["details"]["address"] == "127.0.0.1"
        assert [e["details"]["version"] for e in audit] == ["1.0.0", "1.1.0", "1.1.0", "1.1.0"]
        assert audit[0]["message"] == (
            "alice from 127.0.0.1 paused the rollout of hello 1.0.0: change freeze"
        )


def test_retry_a_halted_rollout_and_skip_a_dead_node(tmp_path: Path) -> None:
    with operated_fleet(tmp_path, soak=0) as fleet:
        fleet.release("1.0.0")
        fleet.wait_release("1.0.0", "Succeeded")

        # 1.1.0's health check is a file on the artifact server that is not there yet
        gate = fleet.artifacts.root / "gate-1.1.0"
        doc = fleet.release_doc("1.1.0")
        doc["health"] = {"http": fleet.artifacts.url(gate.name), "timeoutSeconds": 8}
        fleet.repo.change({f"releases/{WORKLOAD}/1.1.0.yaml": doc}, "hello 1.1.0")
        status = fleet.wait_release("1.1.0", "Halted")
        row = fleet.release_row(status)
        assert row is not None and "node-a reported Failed" in row["reason"]
        gate.write_text("ok\n")  # fixed outside git: no new commit
        time.sleep(2.0)
        assert fleet.release_row()["phase"] == "Halted"  # type: ignore[index]
        out = ok(fleet, "retry", WORKLOAD, "--reason", "health endpoint deployed", "--by", "carol")
        assert "retrying the rollout of hello 1.1.0" in out
        status = fleet.wait_release("1.1.0", "Succeeded")
        assert fleet.release_row(status)["retries"] == 1  # type: ignore[index]

        # node-c dies; 1.2.0 halts on it; skip-node leaves it behind and the rollout ends
        fleet.agents[2].kill()
        fleet.release("1.2.0", timeoutSeconds=12)  # > health.timeoutSeconds 10
        status = fleet.wait_release("1.2.0", "Halted")
        row = fleet.release_row(status)
        assert row is not None and "node node-c" in row["reason"], row
        wrong = rollout(fleet, "skip-node", WORKLOAD, "node-x", "--reason", "x")
        assert wrong.returncode == 1 and "node node-x is not part of" in wrong.stderr
        ok(fleet, "skip-node", WORKLOAD, "node-c", "--reason", "PSU dead", "--by", "carol")
        status = wait_for(fleet, "1.2.0 Succeeded", lambda r: r["phase"] == "Succeeded")
        row = fleet.release_row(status)
        assert row is not None and row["skipped"] == ["node-c"]
        assert desired(status) == {"node-a": "1.2.0", "node-b": "1.2.0", "node-c": "1.1.0"}

        audit = control_audit(fleet)
        assert [(e["kind"], e["node"], e["details"]["reason"]) for e in audit] == [
            ("rollout-retry", None, "health endpoint deployed"),
            ("rollout-skip-node", "node-c", "PSU dead"),
        ]
        assert all(e["details"]["by"] == "carol" for e in audit)
        with fleet.server.admin() as c:
            kinds = [e["kind"] for e in c.get("/v1/audit").json()["events"]]
        assert kinds.count("control-applied") == 2  # the planner's record of each effect
