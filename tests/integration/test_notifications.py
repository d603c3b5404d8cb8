"""Notifications from a real ``fleetkeeper serve`` to real HTTP receivers on 127.0.0.1.

A real halted rollout reaches a signed JSON webhook, a Slack-compatible webhook and an ntfy
topic; a receiver that fails twice gets it on the third attempt; a receiver that never
answers delays neither the reconcile loop nor the other receivers.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.fleet import FleetRepo, HttpAgent, fleet_files, nodes_named, release_doc
from tests.helpers.server import RunningServer, running_server

NODES = ("n1", "n2")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """An HTTP server that records every POST; ``fail[path]`` answers left to fail (503)."""

    url: str
    got: list[Received] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)

    def wait_for(self, path: str, count: int = 1, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [r for r in self.got if r.path == path]
            if len(hits) >= count:
                return hits
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len([r for r in self.got if r.path == path])} < {count}")


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    rec = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            left = rec.fail.get(self.path, 0)
            rec.got.append(Received(self.path, dict(self.headers), body, time.monotonic()))
            if left > 0:
                rec.fail[self.path] = left - 1
                self.send_response(503)
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    rec.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def dead_receiver() -> Iterator[str]:
    """Accepts TCP connections (the kernel's backlog) and never answers a byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        sock.close()


def _secret_file(tmp: Path, name: str, value: str) -> str:
    path = tmp / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


def _metric(server: RunningServer, receiver: str, result: str) -> float:
    with httpx.Client(base_url=server.url) as c:
        text = c.get("/metrics").text
    name = f'fleetkeeper_notifications_total{{receiver="{receiver}",result="{result}"}}'
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_halted_rollout_reaches_webhook_slack_and_ntfy(tmp_path: Path) -> None:
    key = "notify-hmac-key"
    with receiver() as rec:
        notifications = [
            {
                "name": "ops-hook",
                "type": "webhook",
                "url": f"{rec.url}/webhook",
                "secretFile": _secret_file(tmp_path, "notify.secret", key),
                "events": ["halted"],
            },
            {
                "name": "chat",
                "type": "slack",
                "urlFile": _secret_file(tmp_path, "slack.url", f"{rec.url}/slack/T0/B0/xyz"),
                "events": ["halted", "refused"],
            },
            {"name": "phone", "type": "ntfy", "url": f"{rec.url}/fleet-alerts"},
        ]
        files = fleet_files(nodes_named(*NODES), [release_doc("app", "1.0.0", batch_size=1)])
        repo = FleetRepo.create(tmp_path / "fleet", files)
        with running_server(
            tmp_path, repo=repo, extra_config={"notifications": notifications}
        ) as server:
            agents = {n: HttpAgent(server.url, n, server.register(n)) for n in NODES}
            agents["n1"].mode = "fail:app"
            deadline = time.monotonic() + 30
            while not [r for r in rec.got if r.path == "/webhook"]:
                assert time.monotonic() < deadline, "no notification of the halt"
                for a in agents.values():
                    a.tick()
                time.sleep(0.1)
            (hook,) = rec.wait_for("/webhook")
            (slack,) = rec.wait_for("/slack/T0/B0/xyz")
            phone = rec.wait_for("/fleet-alerts")
            assert _metric(server, "ops-hook", "delivered") == 1
            assert _metric(server, "chat", "delivered") == 1

    doc = json.loads(hook.body)
    assert doc["event"] == "halted" and doc["kind"] == "halted"
    assert doc["release"] == "app" and doc["node"] == "n1"
    assert doc["revision"] == repo.head()
    assert "app 1.0.0 halted" in doc["message"]
    stamp = hook.headers["X-Fleetkeeper-Timestamp"]
    assert abs(int(stamp) - time.time()) < 60
    want = hmac.new(key.encode(), stamp.encode() + b"." + hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["X-Fleetkeeper-Signature"] == f"sha256={want}"
    assert hook.headers["X-Fleetkeeper-Event"] == "halted"
    assert hook.headers["Content-Type"] == "application/json"

    text = json.loads(slack.body)
    assert list(text) == ["text"] and text["text"].startswith("fleetkeeper halted: app 1.0.0")

    halted = [r for r in phone if r.headers["Title"] == "fleetkeeper: halted"]
    assert halted and halted[0].headers["Priority"] == "high"
    assert b"halted" in halted[0].body
    assert halted[0].headers["Content-Type"].startswith("text/plain")


def test_a_receiver_failing_twice_gets_it_on_the_third_attempt(tmp_path: Path) -> None:
    with receiver() as rec:
        rec.fail["/flaky"] = 2
        notifications = [
            {
                "name": "flaky",
                "type": "webhook",
                "url": f"{rec.url}/flaky",
                "secretFile": _secret_file(tmp_path, "k", "k"),
                "events": ["refused"],
                "backoffSeconds": 0.3,
            }
        ]
        with running_server(tmp_path, extra_config={"notifications": notifications}) as server:
            assert server.repo is not None
            bad = server.repo.direct_commit(
                {"releases/app/9.9.9.yaml": release_doc("app", "9.9.9")}, "pushed, not merged"
            )
            attempts = rec.wait_for("/flaky", 3)
            time.sleep(1.0)  # nothing more: the third attempt succeeded
            assert len(rec.wait_for("/flaky")) == 3
            assert _metric(server, "flaky", "retried") == 2
            assert _metric(server, "flaky", "delivered") == 1
            assert _metric(server, "flaky", "failed") == 0
    # one notification, three attempts: the same delivery id, each attempt newly signed
    ids = {a.headers["X-Fleetkeeper-Delivery"] for a in attempts}
    assert len(ids) == 1
    assert {json.loads(a.body)["revision"] for a in attempts} == {bad}
    assert attempts[1].at - attempts[0].at >= 0.25  # backoff 0.3 s (+-10% jitter)
    assert attempts[2].at - attempts[1].at >= 0.5  # doubled


def test_a_dead_receiver_slows_neither_the_loop_nor_the_others(tmp_path: Path) -> None:
    with receiver() as rec, dead_receiver() as dead_url:
        notifications = [
            {"name": "dead", "type": "slack", "url": dead_url, "timeoutSeconds": 30},
            {"name": "live", "type": "slack", "url": f"{rec.url}/live"},
        ]
        with running_server(tmp_path, extra_config={"notifications": notifications}) as server:
            assert server.repo is not None
            for i in range(3):  # three refusals queue up behind the dead receiver
                server.repo.direct_commit(
                    {f"releases/app/0.0.{i}.yaml": release_doc("app", f"0.0.{i}")}, f"direct {i}"
                )
                rec.wait_for("/live", i + 1, timeout=10)
            started = time.monotonic()
            # a merged pull request that reverts them (approval resumes) and adds a release
            merged = server.repo.change(
                {"releases/tool/1.0.0.yaml": release_doc("tool", "1.0.0", command=["bin/t"])},
                "revert the direct pushes; tool 1.0.0",
                remove=[f"releases/app/0.0.{i}.yaml" for i in range(3)],
            )
            while server.fleet()["revision"] != merged:
                assert time.monotonic() - started < 5, "the loop waited for a dead receiver"
                time.sleep(0.05)
            assert _metric(server, "dead", "delivered") == 0
            assert _metric(server, "live", "delivered") == 3
            stop_started = time.monotonic()
        assert time.monotonic() - stop_started < 10  # shutdown does not wait for it either


def test_a_node_going_stale_is_notified_once(tmp_path: Path) -> None:
    with receiver() as rec:
        notifications = [
            {"name": "phone", "type": "ntfy", "url": f"{rec.url}/stale", "events": ["stale"]}
        ]
        # staleness is noticed at a pass: resync every second here (the default is 60 s)
        extra = {"notifications": notifications, "heartbeatTTLSeconds": 2, "pollIntervalSeconds": 1}
        with running_server(tmp_path, extra_config=extra) as server:
            agent = HttpAgent(server.url, "node-a", server.register("node-a"))
            agent.tick()  # one report, then silence
            (got,) = rec.wait_for("/stale", timeout=15)
            time.sleep(1.5)  # still stale: no second notification
            assert len(rec.wait_for("/stale")) == 1
    assert got.headers["Title"] == "fleetkeeper: stale"
    assert got.body.startswith(b"node node-a went Stale")
