"""``fleetkeeper serve`` as a real subprocess: webhooks fetch now, tokens are per node,
SIGTERM exits 0 (releasing long-polls), and a restart keeps what was acknowledged."""

from __future__ import annotations

import hashlib
import hmac
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.fleet import FleetRepo, release_doc
from tests.helpers.server import DEFAULT_FILES, restart, running_server, start_server

LONG_POLL = 3600  # the poll interval never fires during a test: only webhooks fetch


def _sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _revision(server_url: str, admin: str) -> str | None:
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {admin}"}) as c:
        rev: str | None = c.get("/v1/fleet").json()["revision"]
        return rev


def test_webhook_bad_signature_fetches_nothing_good_one_fetches_now(tmp_path: Path) -> None:
    repo = FleetRepo.create(tmp_path / "fleet", DEFAULT_FILES)
    first = repo.head()
    with running_server(
        tmp_path,
        repo=repo,
        repo_url=f"file://{repo.path}",
        extra_config={"pollIntervalSeconds": LONG_POLL},
    ) as server:
        assert _revision(server.url, server.admin_token) == first
        new = repo.change(
            {"releases/agent/1.0.0.yaml": release_doc("agent", "1.0.0", command=["bin/agent"])},
            "agent 1",
        )
        body = b'{"ref": "refs/heads/main", "after": "' + new.encode() + b'"}'
        with httpx.Client(base_url=server.url) as c:
            bad = _sign("not the secret", body)
            r = c.post("/hooks/github", content=body, headers={"X-Hub-Signature-256": bad})
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
            time.sleep(1.0)
            assert _revision(server.url, server.admin_token) == first  # nothing fetched
            good = _sign(server.webhook_secret, body)
            sent = time.monotonic()
            r = c.post("/hooks/github", content=body, headers={"X-Hub-Signature-256": good})
            assert r.status_code == 202
        while _revision(server.url, server.admin_token) != new:
            assert time.monotonic() - sent < 10, "the webhook did not lead to a fetch"
            time.sleep(0.05)
        with server.admin() as c:
            kinds = [e["kind"] for e in c.get("/v1/audit").json()["events"]]
        assert kinds.count("applied") == 2
        with httpx.Client(base_url=server.url) as c:
            metrics = c.get("/metrics").text
        assert "fleetkeeper_revisions_applied_total 2.0" in metrics
        assert 'release="agent@1.0.0"' in metrics  # rollout phase gauge for the new release
        assert "fleetkeeper_reconcile_duration_seconds_count" in metrics


def test_node_token_is_scoped_to_its_node(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        token_a = server.register("node-a")
        server.register("node-b")
        with server.client(token_a) as c:
            assert c.get("/v1/nodes/node-a/desired").status_code == 200
            r = c.get("/v1/nodes/node-b/desired")
            assert r.status_code == 403 and r.json()["error"] == "forbidden"
            report = {"node": "node-b", "generation": 0, "workloads": []}
            assert c.post("/v1/nodes/node-b/status", json=report).status_code == 403


def test_sigterm_releases_long_polls_and_exits_zero(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        token = server.register("node-a")
        with server.client(token) as c:
            etag = c.get("/v1/nodes/node-a/desired").headers["etag"]
        answers: list[int] = []

        def poll() -> None:
            with server.client(token) as c:
                r = c.get(
                    "/v1/nodes/node-a/desired",
                    params={"wait": 60},
                    headers={"If-None-Match": etag},
                )
                answers.append(r.status_code)

        t = threading.Thread(target=poll)
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        code = server.stop(signal.SIGTERM)
        elapsed = time.monotonic() - started
        t.join(timeout=5)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert code == 0, server.logs()
    assert answers == [304]
    assert elapsed < 5, f"shutdown took {elapsed:.1f}s"


def test_restart_keeps_tokens_reports_and_desired_state(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        token = server.register("node-a")
        with server.client(token) as c:
            before = c.get("/v1/nodes/node-a/desired")
            report = {"node": "node-a", "generation": 1, "workloads": []}
            assert c.post("/v1/nodes/node-a/status", json=report).status_code == 200
        server = restart(server)  # same config, state directory and database
        with server.client(token) as c:
            etag = before.headers["etag"]
            after = c.get("/v1/nodes/node-a/desired", headers={"If-None-Match": etag})
            assert after.status_code == 304  # the same token and the same document
        (row,) = [n for n in server.fleet()["nodes"] if n["node"] == "node-a"]
        assert row["lastSeen"] is not None  # the acknowledged report survived
    finally:
        code = server.stop()
    assert code == 0, server.logs()


def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """Crash right after the answers: the token, the report and the audit entry are there."""
    server = start_server(tmp_path)
    try:
        token = server.register("node-b")
        report = {"node": "node-b", "generation": 0, "agentVersion": "9.9.9", "workloads": []}
        with server.client(token) as c:
            assert c.post("/v1/nodes/node-b/status", json=report).status_code == 200
        server = restart(server, crash=True)
        with server.client(token) as c:
            assert c.get("/v1/nodes/node-b/desired").status_code == 200  # token survived
        (row,) = [n for n in server.fleet()["nodes"] if n["node"] == "node-b"]
        assert row["lastSeen"] is not None
        with server.admin() as c:
            events = c.get("/v1/audit").json()["events"]
        assert any(e["kind"] == "registered" and e["node"] == "node-b" for e in events)
    finally:
        code = server.stop()
    assert code == 0, server.logs()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("repo: 5\nbogus: 1\n", "'bogus' was unexpected"),
        ("repo: {missing}\nlisten: 127.0.0.1:0\nstateDir: {state}\n", "is not a git repository"),
        ("repo: {missing}\nadminTokenFile: {missing}/admin.token\n", "adminTokenFile: cannot read"),
    ],
)
def test_serve_refuses_a_bad_config_with_exit_1(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "reconciler.yaml"
    path.write_text(config.format(missing=tmp_path / "missing", state=tmp_path / "state"))
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""  # never claimed to listen
