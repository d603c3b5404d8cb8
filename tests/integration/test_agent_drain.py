"""Drain before restart with real processes: a client's slow request to the old version is
held open across the update, and it completes (200 from the old version) before the new
version serves. Both drain forms (HTTP endpoint, update-lock file), the timeout, the
overlap swap of model servers (new beside old on a shared port), and the same update
without drain as the control (the request is cut)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import procinfo
from agent.procinfo import ProcInfo
from agent.runtimes import register_runtime
from agent.runtimes.process import ProcessRuntime
from tests.helpers.agents import running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc
from tests.helpers.server import start_server
from tests.integration.test_agent_converge import Rig, running_rig

SLOW = 3.0


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with running_rig(tmp_path) as r:
        yield r


class SlowClient(threading.Thread):
    """GET /slow on the workload in a thread; keeps the answer (or the error)."""

    def __init__(self, port: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/slow?s={seconds}"
        self.status: int | None = None
        self.body = ""
        self.error: Exception | None = None
        self.finished_at = 0.0

    def run(self) -> None:
        try:
            resp = httpx.get(self.url, timeout=30)
            self.status, self.body = resp.status_code, resp.text.strip()
        except httpx.HTTPError as exc:
            self.error = exc
        self.finished_at = time.monotonic()


def _doc(rig: Rig, version: str, drain: dict[str, Any] | None, lock: Path | None = None) -> Any:
    art = rig.build(version)
    doc = rig.doc(version, art)
    if lock is not None:
        doc["run"]["command"] += ["--lock", str(lock)]
    if drain is not None:
        doc["drain"] = drain
    return doc


def _update_during_slow_request(
    rig: Rig, drain: dict[str, Any] | None, lock: Path | None = None, seconds: float = SLOW
) -> tuple[SlowClient, Any, float]:
    assert rig.converge(_doc(rig, "1.0.0", drain, lock)).ok
    assert rig.served_version() == "hello 1.0.0"
    client = SlowClient(rig.port, seconds)
    client.start()
    deadline = time.monotonic() + 5
    while lock is not None and not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # the request is in flight at the old version
    began = time.monotonic()
    out = rig.converge(_doc(rig, "1.1.0", drain, lock))
    took = time.monotonic() - began
    client.join(timeout=30)
    return client, out, took


def test_http_drain_lets_the_slow_request_finish_on_the_old_version(rig: Rig) -> None:
    drain = {"http": f"http://127.0.0.1:{rig.port}/drain", "timeoutSeconds": 20}
    client, out, took = _update_during_slow_request(rig, drain)
    assert out.ok, out.message
    assert (client.status, client.body, client.error) == (200, "hello 1.0.0", None)
    assert rig.served_version() == "hello 1.1.0"
    # the agent waited for the request (about SLOW - 0.3 s), not for the whole timeout
    assert out.timings["drain"] >= SLOW - 1.0, out.timings
    assert out.timings["drain"] < 10, out.timings
    assert took >= SLOW - 1.0


def test_file_drain_waits_for_the_update_lock(rig: Rig, tmp_path: Path) -> None:
    lock = tmp_path / "locks" / "hello.lock"
    lock.parent.mkdir()
    drain = {"file": str(lock), "timeoutSeconds": 20}
    client, out, _ = _update_during_slow_request(rig, drain, lock)
    assert out.ok, out.message
    assert (client.status, client.body, client.error) == (200, "hello 1.0.0", None)
    assert rig.served_version() == "hello 1.1.0"
    assert out.timings["drain"] >= SLOW - 1.0, out.timings
    # the old version removed its lock when its request was answered; the agent never
    # creates one of its own (the path comes from a fleet file, the agent may be root)
    assert not lock.exists()


def test_without_drain_the_slow_request_is_cut(rig: Rig) -> None:
    """The control: the same update without drain kills the request in flight."""
    client, out, _ = _update_during_slow_request(rig, None)
    assert out.ok, out.message
    assert client.status is None and client.error is not None
    assert "drain" not in out.timings


def test_drain_timeout_restarts_anyway_and_says_so(rig: Rig) -> None:
    drain = {"http": f"http://127.0.0.1:{rig.port}/drain", "timeoutSeconds": 1}
    client, out, took = _update_during_slow_request(rig, drain, seconds=8)
    assert out.ok, out.message
    assert rig.served_version() == "hello 1.1.0"
    assert took < 7  # did not wait for the 8 s request
    assert "drain timed out after 1s" in out.message and "answered 202" in out.message
    # the report carries it (the board note is what the reporter sends)
    note = rig.conv.board.get("hello")
    assert note.phase == "Healthy" and "drain timed out after 1s" in str(note.message)
    records = [json.loads(line) for line in rig.state.timings_file.read_text().splitlines()]
    assert "drain timed out after 1s" in records[-1]["notes"][0]


class OverlapRuntime(ProcessRuntime):
    """The process runtime with the model servers' overlap swap: a new version whose
    program shares the port (``--reuseport``) starts beside the running one."""

    name = "test-overlap"

    def can_handoff(self, argv: Sequence[str], running: ProcInfo | None) -> bool:
        return running is not None and "--reuseport" in argv


def test_file_drain_with_the_overlap_swap(rig: Rig, tmp_path: Path) -> None:
    """Blue/green (as model servers with ``swap: overlap``): the new version starts beside
    the old one on the shared port and is proven; the old one finishes the request it holds
    before it is retired."""
    register_runtime("test-overlap", OverlapRuntime())
    lock = tmp_path / "model.lock"
    drain = {"file": str(lock), "timeoutSeconds": 20}

    def doc(version: str) -> Any:
        d = _doc(rig, version, drain, lock)
        d["run"]["command"].append("--reuseport")
        return {**d, "kind": "model", "model": {"runtime": "test-overlap", "args": {}}}

    assert rig.converge(doc("1.0.0")).ok
    old = rig.sup.running("hello")
    client = SlowClient(rig.port, SLOW)
    client.start()
    deadline = time.monotonic() + 5
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    out = rig.converge(doc("1.1.0"))
    client.join(timeout=30)
    assert out.ok, out.message
    assert "retire" in out.timings  # it was a handoff, not a restart
    assert (client.status, client.body, client.error) == (200, "hello 1.0.0", None)
    assert out.timings["drain"] >= SLOW - 1.5, out.timings
    new = rig.sup.running("hello")
    assert old is not None and new is not None and new.pid != old.pid
    assert not procinfo.alive(old.pid, old.start_id)
    assert {rig.served_version() for _ in range(5)} == {"hello 1.1.0"}


def test_drain_end_to_end_through_the_reconciler(tmp_path: Path) -> None:
    """The fleet repo declares ``drain`` with a ``${node.labels.port}`` placeholder;
    ``fleetkeeper serve`` resolves it into the node's desired document, a real agent drains
    its workload: the request in flight when 1.1.0 is merged completes on 1.0.0."""
    port = free_port()
    files: dict[str, Any] = {
        "fleet.yaml": fleet_doc(),
        "nodes/node-d.yaml": node_doc("node-d", labels={"port": str(port)}),
    }
    repo = FleetRepo.create(tmp_path / "fleet", files)
    server = start_server(
        tmp_path / "server",
        repo=repo,
        extra_config={"pollIntervalSeconds": 1, "listen": f"127.0.0.1:{free_port()}"},
    )
    dist = tmp_path / "dist"
    try:
        with (
            ArtifactServer(dist) as artifacts,
            running_agents(tmp_path / "agents", server.url, server.bootstrap_token, ["node-d"]) as [
                agent
            ],
        ):

            def release(version: str) -> dict[str, Any]:
                art = build_program(dist, "hello", version)
                doc = hello_release(version, art, artifacts.url(art.path.name))
                doc["drain"] = {
                    "http": "http://127.0.0.1:${node.labels.port}/drain",
                    "timeoutSeconds": 30,
                }
                return doc

            repo.change({"releases/hello/1.0.0.yaml": release("1.0.0")}, "hello 1.0.0")
            agent.wait_for(lambda a: a.running("hello") == "1.0.0", what="1.0.0 runs", timeout=60)
            client = SlowClient(port, 8)
            client.start()
            time.sleep(0.3)
            repo.change({"releases/hello/1.1.0.yaml": release("1.1.0")}, "hello 1.1.0")
            agent.wait_for(lambda a: a.running("hello") == "1.1.0", what="1.1.0 runs", timeout=60)
            client.join(timeout=30)
            assert (client.status, client.body, client.error) == (200, "hello 1.0.0", None)
            desired = json.loads((agent.state_dir / "desired.json").read_text())["document"]
            assert desired["workloads"][0]["drain"]["http"] == f"http://127.0.0.1:{port}/drain"

            def last_update(a: Any) -> dict[str, Any]:
                lines = (a.state_dir / "timings.jsonl").read_text().splitlines()
                return dict(json.loads(lines[-1]))

            agent.wait_for(lambda a: last_update(a)["version"] == "1.1.0", what="1.1.0 proven")
            assert last_update(agent)["drain"] >= 4, last_update(agent)
    finally:
        server.stop()
