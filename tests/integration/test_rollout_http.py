"""End to end over HTTP: ``fleetkeeper serve`` as a subprocess, agents as httpx clients.

Real time with short soaks (1-2 s), so each scenario takes a few seconds.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.fleet import FleetRepo, HttpAgent, fleet_files, nodes_named, release_doc
from tests.helpers.server import RunningServer, running_server, start_server

FIVE = ("n1", "n2", "n3", "n4", "n5")
V = "1.0.0"
TICK = 0.1


def agents_for(server: RunningServer, nodes: tuple[str, ...] = FIVE) -> dict[str, HttpAgent]:
    return {n: HttpAgent(server.url, n, server.register(n)) for n in nodes}


def version_of(doc: dict[str, Any] | None, name: str = "app") -> str | None:
    for w in (doc or {}).get("workloads", []):
        if w["name"] == name:
            return str(w["version"])
    return None


def release_row(server: RunningServer, name: str = "app") -> dict[str, Any]:
    rows = [r for r in server.fleet()["releases"] if r["agent"] == name]
    assert rows, server.fleet()
    return dict(rows[-1])


def drive(
    agents: dict[str, HttpAgent],
    until: Callable[[], bool],
    timeout: float = 60.0,
    each: Callable[[], None] | None = None,
) -> None:
    """Let every agent tick until ``until()`` holds (or fail after ``timeout``: a bound for a
    loaded machine, not a duration any test depends on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for a in agents.values():
            a.tick()
        if each is not None:
            each()
        if until():
            return
        time.sleep(TICK)
    raise AssertionError("condition not reached in time")


def serve_fleet(tmp: Path, *releases: dict[str, Any]) -> tuple[FleetRepo, Any]:
    repo = FleetRepo.create(tmp / "fleet", fleet_files(nodes_named(*FIVE), releases))
    return repo, running_server(tmp, repo=repo)


def test_five_nodes_batch2_soak_over_http(tmp_path: Path) -> None:
    soak = 2
    repo, ctx = serve_fleet(tmp_path, release_doc("app", V, batch_size=2, soak=soak))
    with ctx as server:
        agents = agents_for(server)
        drive(agents, lambda: release_row(server)["phase"] == "Succeeded", 90)
        key = f"app@{V}"
        given = {n: a.given_at[key] for n, a in agents.items()}
        healthy = {n: a.healthy_at[key] for n, a in agents.items()}
        # a later batch was given the release only after the earlier one had soaked
        # (given: after the GET returned; healthy: before the report was sent)
        assert min(given["n3"], given["n4"]) - max(healthy["n1"], healthy["n2"]) >= soak
        assert given["n5"] - max(healthy["n3"], healthy["n4"]) >= soak
        assert max(given["n1"], given["n2"]) < min(given["n3"], given["n4"])
        row = release_row(server)
        assert row["batch"] == "3/3"
        assert [b["nodes"] for b in row["batches"]] == [["n1", "n2"], ["n3", "n4"], ["n5"]]
        assert all(b["state"] == "Done" for b in row["batches"])
        assert {n["node"]: n["health"] for n in server.fleet()["nodes"]} == dict.fromkeys(
            FIVE, "Healthy"
        )


def test_failed_health_halts_over_http(tmp_path: Path) -> None:
    repo, ctx = serve_fleet(tmp_path, release_doc("app", V, batch_size=2, soak=1))
    with ctx as server:
        agents = agents_for(server)
        agents["n2"].mode = "fail:app"
        drive(agents, lambda: release_row(server)["phase"] == "Halted")
        row = release_row(server)
        assert "n2" in row["reason"] and row["batch"] == "1/3"
        for _ in range(5):  # it stays halted; nodes of later batches are never touched
            for a in agents.values():
                a.tick()
            time.sleep(TICK)
        assert version_of(agents["n3"].desired()) is None
        assert version_of(agents["n1"].desired()) == V
        with server.admin() as c:
            events = c.get("/v1/audit").json()["events"]
        assert any(e["kind"] == "halted" and e["node"] == "n2" for e in events)


@pytest.mark.parametrize("kill", [signal.SIGKILL])
def test_sigkill_mid_rollout_resumes(tmp_path: Path, kill: int) -> None:
    repo = FleetRepo.create(
        tmp_path / "fleet",
        fleet_files(nodes_named(*FIVE), [release_doc("app", V, batch_size=2, soak=1)]),
    )
    server = start_server(tmp_path, repo=repo)
    try:
        agents = agents_for(server)
        # batch 2 (n3, n4) has started: both hold it, or a pass between n3's tick and n4's
        # could hand n4 its document only after the generations below were read
        drive(agents, lambda: all(version_of(agents[n].last) == V for n in ("n3", "n4")))
        gens = {n: int(a.desired()["generation"]) for n, a in agents.items()}  # type: ignore[index]
        assert server.stop(kill) == -signal.SIGKILL
    finally:
        if server.process.poll() is None:
            server.stop()
    # a new process on the same state directory and repo
    with running_server(tmp_path, repo=repo) as again:
        for a in agents.values():
            a.url = again.url
        for n in ("n1", "n2"):  # converged nodes are untouched: same generation
            assert int(agents[n].desired()["generation"]) == gens[n]  # type: ignore[index]
        drive(agents, lambda: release_row(again)["phase"] == "Succeeded", 90)
        for n in ("n1", "n2", "n3", "n4"):
            assert int(agents[n].desired()["generation"]) == gens[n]  # type: ignore[index]
        with again.admin() as c:
            events = c.get("/v1/audit", params={"limit": 1000}).json()["events"]
        assert [e["kind"] for e in events].count("rollout-started") == 1
        assert [e["kind"] for e in events].count("batch-started") == 3
