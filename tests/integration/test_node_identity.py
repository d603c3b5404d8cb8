"""Node identity attacks against a real ``fleetkeeper serve`` and real agents (issue 10).

The old shared bootstrap token used to be every node's identity: with it anyone could
re-register ``gpu-1`` (locking the real node out) or register a new name with self-reported
roles and join rollouts. Each test performs the attack and asserts the refusal, and that
the real node goes on working.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifacts import (
    ArtifactServer,
    build_program,
    free_port,
    hello_release,
)
from tests.helpers.fleet import FleetRepo, fleet_doc
from tests.helpers.server import RunningServer, register_doc, restart, start_fleet, start_server
from tests.helpers.wait import wait_until


@dataclass
class Lab:
    tmp: Path
    repo: FleetRepo
    server: RunningServer
    artifacts: ArtifactServer
    port: int

    def merge_release(self, version: str) -> None:
        art = build_program(self.tmp / "dist", "hello", version)
        doc = hello_release(version, art, self.artifacts.url(art.path.name))
        self.repo.change({f"releases/hello/{version}.yaml": doc}, f"release hello {version}")

    def node(self, name: str) -> dict[str, Any] | None:
        return next((n for n in self.server.fleet()["nodes"] if n["node"] == name), None)

    def release_phase(self) -> str | None:
        rows = [r for r in self.server.fleet()["releases"] if r["agent"] == "hello"]
        return rows[-1]["phase"] if rows else None

    def audit(self, kind: str) -> list[dict[str, Any]]:
        with self.server.admin() as c:
            events = c.get("/v1/audit").json()["events"]
        return [e for e in events if e["kind"] == kind]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``fleetkeeper COMMAND [ACTION] --server URL --token-file ADMIN ARGS...``."""
        token_file = self.server.config_path.parent / "admin.secret"
        words = 1 if args[0] in ("status", "audit") else 2
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args[:words], "--server", self.server.url]
            + ["--token-file", str(token_file), *args[words:]],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},  # tables unsqueezed
        )


def _wait(check: Any, what: str, timeout: float = 30.0) -> Any:
    return wait_until(what, check, timeout, interval=0.2)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    repo, server, ports = start_fleet(tmp_path, ["gpu-1"])
    (tmp_path / "dist").mkdir()
    artifacts = ArtifactServer(tmp_path / "dist").__enter__()
    lab = Lab(tmp_path, repo, server, artifacts, ports["gpu-1"])
    try:
        yield lab
    finally:
        artifacts.__exit__(None, None, None)
        lab.server.stop()  # a test may have restarted it


def _healthy(agent: AgentProc, version: str) -> bool:
    w = agent.workload("hello")
    return bool(w and w["phase"] == "Healthy" and w["version"] == version and w["healthy"])


def _post_register(server: RunningServer, node: str, token: str, **facts: Any) -> httpx.Response:
    with server.client(token) as c:
        return c.post(f"/v1/nodes/{node}/register", json=register_doc(node, **facts))


def test_impostor_with_the_bootstrap_token_cannot_take_over_gpu_1(lab: Lab) -> None:
    s = lab.server
    with running_agents(lab.tmp / "agents", s.url, s.bootstrap_token, ["gpu-1"]) as (real,):
        lab.merge_release("1.0.0")
        real.wait_for(lambda a: _healthy(a, "1.0.0"), timeout=40, what="1.0.0 healthy")
        credential = (real.state_dir / "node.token").read_text().strip()

        # the attack: re-register gpu-1 with the shared bootstrap token (old code: 200,
        # the real node's token rotated, the impostor reporting "Healthy" in its place)
        r = _post_register(s, "gpu-1", s.bootstrap_token, hostname="impostor")
        assert r.status_code == 409, r.text
        assert "fleetkeeper node reset gpu-1" in r.json()["message"]
        # a join token for that very name does not help either: the name is taken
        join = s.create_token(node="gpu-1")
        assert _post_register(s, "gpu-1", join["token"]).status_code == 409

        metrics = httpx.get(f"{s.url}/metrics", timeout=10).text
        assert "fleetkeeper_registrations_refused_total 2.0" in metrics
        refused = lab.audit("registration-refused")
        assert [e["details"]["address"] for e in refused] == ["127.0.0.1", "127.0.0.1"]
        assert refused[0]["node"] == "gpu-1" and "bootstrap" in refused[0]["message"]

        # the real node is not locked out: same credential, still answered, still reporting
        assert (real.state_dir / "node.token").read_text().strip() == credential
        with s.client(credential) as c:
            assert c.get("/v1/nodes/gpu-1/desired").status_code == 200
        seen = lab.node("gpu-1")["lastSeen"]  # type: ignore[index]
        _wait(lambda: lab.node("gpu-1")["lastSeen"] != seen, "a fresh heartbeat")  # type: ignore[index]
        assert lab.node("gpu-1")["health"] == "Healthy"  # type: ignore[index]
        assert "registering again" not in real.logs()

        # the same attack from a real agent process on another machine (a compromised node
        # copies the shared token and calls itself gpu-1): refused, it never holds a token
        with running_agents(lab.tmp / "impostor", s.url, s.bootstrap_token, ["gpu-1"]) as (fake,):
            _wait(lambda: "HTTP 409" in fake.logs(), "the impostor agent refused")
            assert "fleetkeeper node reset gpu-1" in fake.logs()
            assert not (fake.state_dir / "node.token").exists()
            lab.merge_release("1.1.0")
            real.wait_for(lambda a: _healthy(a, "1.1.0"), timeout=40, what="1.1.0 healthy")
        assert (real.state_dir / "node.token").read_text().strip() == credential


def test_new_name_with_self_reported_roles_cannot_join_rollouts(lab: Lab) -> None:
    s = lab.server
    s.register("gpu-1")
    lab.merge_release("1.0.0")
    # the attack of old: a new name with the bootstrap token (old code: 200, then planned
    # on its self-reported roles, and its Failed report halted the release for everyone)
    r = _post_register(s, "evil-1", s.bootstrap_token, roles=["inference"])
    assert r.status_code == 403 and "only nodes declared in nodes/" in r.json()["message"]
    # with a join token for that name it registers, but gets nothing: it is Unlisted
    join = s.create_token(node="evil-1")
    r = _post_register(s, "evil-1", join["token"], roles=["inference"])
    assert r.status_code == 200, r.text
    evil = r.json()["token"]
    _wait(lambda: (lab.node("evil-1") or {}).get("health") == "Unlisted", "evil-1 Unlisted")
    shown = lab.cli("status", "--format", "text")
    assert "evil-1" in shown.stdout and "Unlisted" in shown.stdout, shown.stdout + shown.stderr
    assert "1 unlisted (no workload)" in shown.stdout
    with s.client(evil) as c:
        assert c.get("/v1/nodes/evil-1/desired").json()["workloads"] == []
        failed = {
            "node": "evil-1",
            "generation": 1,
            "workloads": [
                {"name": "hello", "version": "1.0.0", "phase": "Failed", "healthy": False}
            ],
        }
        assert c.post("/v1/nodes/evil-1/status", json=failed).status_code == 200
    time.sleep(1.5)
    assert lab.release_phase() != "Halted"
    assert not any(e["node"] == "evil-1" for e in lab.audit("halted"))


def test_unlisted_nodes_join_only_through_a_scope_that_covers_their_claims(lab: Lab) -> None:
    s = lab.server
    fleet = fleet_doc()
    fleet["registration"] = {"unlisted": "allow"}
    lab.repo.change({"fleet.yaml": fleet}, "allow unlisted nodes")
    scoped = s.create_token(roles=["inference"], labels={"site": "lab"}, uses=3)
    # claims outside the scope are refused, naming what is not covered
    r = _post_register(s, "edge-1", scoped["token"], roles=["inference", "gpu"])
    assert r.status_code == 403 and "role 'gpu'" in r.json()["message"]
    r = _post_register(s, "edge-1", scoped["token"], labels={"site": "prod"})
    assert r.status_code == 403 and "label site=prod" in r.json()["message"]
    # inside the scope: admitted and planned
    ok = _post_register(s, "edge-1", scoped["token"], roles=["inference"], labels={"site": "lab"})
    assert ok.status_code == 200, ok.text
    # a node-scoped token claiming the same roles stays Unlisted even with allow
    other = s.create_token(node="edge-2")
    assert _post_register(s, "edge-2", other["token"], roles=["inference"]).status_code == 200
    lab.merge_release("1.0.0")  # edge-1 goes first (batches are sorted; gpu-1 never reports)

    def desired(node: str, token: str) -> list[Any]:
        with s.client(token) as c:
            return list(c.get(f"/v1/nodes/{node}/desired").json()["workloads"])

    _wait(lambda: [w["name"] for w in desired("edge-1", ok.json()["token"])] == ["hello"], "hello")
    assert (lab.node("edge-2") or {})["health"] == "Unlisted"
    assert (lab.node("edge-1") or {})["health"] != "Unlisted"


def test_expired_used_up_and_revoked_join_tokens_are_refused(lab: Lab) -> None:
    s = lab.server
    created = lab.cli("token", "create", "--ttl", "1s", "--format", "json")
    assert created.returncode == 0, created.stderr
    short = json.loads(created.stdout)
    once = lab.cli("token", "create", "--node", "gpu-1")
    assert once.returncode == 0, once.stderr
    assert "1 use(s)" in once.stderr
    single = once.stdout.strip()
    assert single.startswith("fkjoin_")
    revoked = s.create_token(uses=5)

    time.sleep(1.2)
    r = _post_register(s, "gpu-1", short["token"])
    assert r.status_code == 401 and "expired" in r.json()["message"]
    assert lab.cli("token", "revoke", revoked["id"]).returncode == 0
    r = _post_register(s, "gpu-1", revoked["token"])
    assert r.status_code == 401 and "revoked" in r.json()["message"]

    first = _post_register(s, "gpu-1", single)
    assert first.status_code == 200, first.text
    lab.server = s = restart(s)  # spent and revoked stay so across a restart
    assert lab.cli("node", "reset", "gpu-1").returncode == 0  # free the name again
    r = _post_register(s, "gpu-1", single)
    assert r.status_code == 401 and "used-up" in r.json()["message"]
    assert s.create_token(node="gpu-1")["state"] == "active"

    listed = lab.cli("token", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    states = {t["id"]: t["state"] for t in json.loads(listed.stdout)["tokens"]}
    assert states[short["id"]] == "expired" and states[revoked["id"]] == "revoked"
    assert "used-up" in states.values()
    assert "fkjoin_" not in listed.stdout  # secrets are never listed
    text = lab.cli("token", "list")
    assert text.returncode == 0 and "node gpu-1" in text.stdout and "1/1" in text.stdout
    # every use is audited, with the token's id
    used = [e for e in lab.audit("registered") if e["details"].get("credential", "")]
    assert any(e["details"]["credential"].startswith("join token ") for e in used)
    reasons = [e["details"]["reason"] for e in lab.audit("registration-refused")]
    assert reasons == ["token-expired", "token-revoked", "token-used-up"]


def test_node_reset_revokes_the_credential_and_frees_the_name(lab: Lab) -> None:
    s = lab.server
    old = s.register("gpu-1")
    # without the current credential nobody re-registers the name...
    assert _post_register(s, "gpu-1", s.bootstrap_token).status_code == 409
    # ...until an operator resets it (lost disk, stolen credential)
    reset = lab.cli("node", "reset", "gpu-1")
    assert reset.returncode == 0, reset.stderr
    with s.client(old) as c:
        assert c.get("/v1/nodes/gpu-1/desired").status_code == 401
    fresh = _post_register(s, "gpu-1", s.create_token(node="gpu-1")["token"])
    assert fresh.status_code == 200, fresh.text
    events = lab.audit("node-reset")
    assert len(events) == 1 and events[0]["details"]["address"] == "127.0.0.1"
    missing = lab.cli("node", "reset", "nope")
    assert missing.returncode == 1 and "not registered" in missing.stderr
    no_admin = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "node", "reset", "gpu-1", "--server", s.url],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "FLEETKEEPER_TOKEN"},
    )
    assert no_admin.returncode == 1 and "refused the admin token" in no_admin.stderr


def test_agent_needs_the_join_token_only_once_and_says_which_credential_it_holds(
    lab: Lab,
) -> None:
    s = lab.server
    join = s.create_token(node="gpu-1")
    with running_agents(lab.tmp / "agents", s.url, join["token"], ["gpu-1"], start=False) as (a,):
        a.write_config()
        before = a.cli("status", "--format", "json")
        assert before.returncode == 0, before.stderr
        assert json.loads(before.stdout)["credential"]["kind"] == "join-token"
        a.start()
        lab.merge_release("1.0.0")
        a.wait_for(lambda x: _healthy(x, "1.0.0"), timeout=40, what="1.0.0 healthy")
        table = a.cli("status")
        assert "credential: node credential" in table.stdout
        assert "is no longer needed" in table.stdout
        assert join["token"] not in table.stdout
        a.stop()
        Path(a.config["bootstrapTokenFile"]).unlink()  # as the docs allow
        a.start()
        lab.merge_release("1.1.0")
        a.wait_for(lambda x: _healthy(x, "1.1.0"), timeout=40, what="1.1.0 healthy")
        after = json.loads(a.cli("status", "--format", "json").stdout)
        assert after["credential"] == {
            "kind": "node-credential",
            "file": str(a.state_dir / "node.token"),
        }
        assert [w["name"] for w in after["workloads"]] == ["hello"]
    with s.admin() as c:
        tokens = {t["id"]: t for t in c.get("/v1/tokens").json()["tokens"]}
    assert tokens[join["id"]]["used"] == 1  # one registration, then the node credential


def test_state_dir_and_database_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        server = start_server(tmp_path)
    finally:
        os.umask(old)
    try:
        server.register("node-a")
        assert stat.S_IMODE(server.state_dir.stat().st_mode) == 0o700
        db = server.state_dir / "state.db"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        for extra in server.state_dir.glob("state.db-*"):
            assert stat.S_IMODE(extra.stat().st_mode) == 0o600, extra
    finally:
        assert server.stop() == 0


def _slow_client(url: str, payload: bytes, delay: float, prefix: bytes = b"") -> tuple[float, bool]:
    """Send ``prefix`` at once, then ``payload`` a byte at a time; (seconds until the server
    hung up, hung up?)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(prefix)
        for b in payload:
            try:
                sock.sendall(bytes([b]))
            except OSError:
                return time.monotonic() - started, True
            time.sleep(delay)
            sock.settimeout(0.0)
            try:
                if sock.recv(1) == b"":
                    return time.monotonic() - started, True
            except BlockingIOError:
                pass
            except OSError:
                return time.monotonic() - started, True
            sock.settimeout(10)
        return time.monotonic() - started, False


def test_slowloris_clients_are_disconnected_while_agents_keep_working(tmp_path: Path) -> None:
    import socket
    import threading

    limits = {"headerTimeoutSeconds": 1, "bodyTimeoutSeconds": 1}
    server = start_server(tmp_path, extra_config=limits)
    try:
        with running_agents(tmp_path / "agents", server.url, server.bootstrap_token, ["node-a"]):

            def last_seen() -> Any:
                row = next((n for n in server.fleet()["nodes"] if n["node"] == "node-a"), {})
                return row.get("lastSeen")

            _wait(last_seen, "the real agent's first report")
            results: dict[str, tuple[float, bool]] = {}
            headers = b"GET /v1/nodes/node-a/desired HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 40

            def dribble(name: str) -> None:
                results[name] = _slow_client(server.url, headers, 0.1)  # 50 s if never cut

            post = (
                b"POST /v1/nodes/node-a/status HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 400\r\n\r\n"
            )

            def slow_post(name: str) -> None:  # complete headers, then a body byte at a time
                results[name] = _slow_client(server.url, b" " * 400, 0.1, prefix=post)

            threads = [threading.Thread(target=dribble, args=(f"s{i}",)) for i in range(6)]
            threads += [threading.Thread(target=slow_post, args=(f"p{i}",)) for i in range(2)]
            for t in threads:
                t.start()
            # a silent connection (connect, send nothing) is closed too
            host, port = server.url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port)), timeout=10) as silent:
                t0 = time.monotonic()
                assert silent.recv(1) == b""
                assert time.monotonic() - t0 < 3
            # meanwhile the real agent keeps reporting (heartbeat every second)...
            seen = last_seen()
            _wait(lambda: last_seen() != seen, "a heartbeat during the attack", timeout=10)
            # ...and a long-poll whose headers arrived is not cut by the header timeout
            token = (tmp_path / "agents" / "node-a" / "state" / "node.token").read_text()
            with server.client(token.strip()) as c:
                etag = c.get("/v1/nodes/node-a/desired").headers["etag"]
                t0 = time.monotonic()
                r = c.get("/v1/nodes/node-a/desired?wait=2", headers={"If-None-Match": etag})
                # held past the 1 s header timeout (the hub cuts a wait short by up to 10 %)
                assert r.status_code == 304 and time.monotonic() - t0 >= 1.7
            for t in threads:
                t.join(timeout=60)
            assert len(results) == 8
            for took, hung_up in results.values():
                assert hung_up and took < 3, results
    finally:
        assert server.stop() == 0


def test_http_limits_are_config_keys(tmp_path: Path) -> None:
    from reconciler.config import parse_config
    from reconciler.httpserver import server_config

    doc: Mapping[str, Any] = {
        "repo": "/srv/fleet",
        "headerTimeoutSeconds": 3,
        "bodyTimeoutSeconds": 7,
        "keepAliveSeconds": 30,
        "maxConnections": 100,
        "maxHeaderBytes": 8192,
    }
    cfg = parse_config(doc, base=tmp_path, env={})
    uv = server_config(object(), cfg, graceful_shutdown=5)
    assert (uv.timeout_keep_alive, uv.limit_concurrency) == (30, 100)
    assert uv.http.max_header_bytes == 8192  # type: ignore[union-attr]
    assert uv.http.header_timeout == 3  # type: ignore[union-attr]
    assert uv.http.body_timeout == 7  # type: ignore[union-attr]
    defaults = server_config(
        object(), parse_config({"repo": "/x"}, base=tmp_path, env={}), graceful_shutdown=5
    )
    assert defaults.limit_concurrency is not None and defaults.limit_concurrency >= 8000 * 2


def _stored_workloads(server: RunningServer, node: str) -> list[Any] | None:
    """``node``'s desired workloads as the reconciler's SQLite file holds them."""
    uri = f"file:{server.state_dir / 'state.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        row = db.execute("SELECT document FROM desired WHERE node = ?", (node,)).fetchone()
    return None if row is None else list(json.loads(row[0])["workloads"])


def test_a_reset_unlisted_node_loses_its_workloads_at_once(tmp_path: Path) -> None:
    """An operator resets an admitted Unlisted node (a stolen credential): it leaves the
    inventory, so its stored document must empty on the pass the reset wakes, not on the
    next resync (pollIntervalSeconds, 60 s by default) as when the planner's in-memory
    inventory was only re-read on registrations."""
    fleet = {**fleet_doc(), "registration": {"unlisted": "allow"}}
    (tmp_path / "dist").mkdir()
    art = build_program(tmp_path / "dist", "hello", "1.0.0")
    with ArtifactServer(tmp_path / "dist") as artifacts:
        files = {
            "fleet.yaml": fleet,
            # in the repo from the start (git is polled only every pollIntervalSeconds),
            # with no node to target yet: edge-1 is its only one
            "releases/hello/1.0.0.yaml": hello_release("1.0.0", art, artifacts.url(art.path.name)),
        }
        repo = FleetRepo.create(tmp_path / "fleet", files)
        s = start_server(tmp_path / "server", repo=repo, extra_config={"pollIntervalSeconds": 60})
        try:
            claims = {"roles": ["inference"], "labels": {"port": str(free_port())}}
            scoped = s.create_token(**claims, uses=1)
            ok = _wait(  # 503 until the first revision is applied
                lambda: (
                    r
                    if (
                        r := _post_register(s, "edge-1", scoped["token"], roles=["inference"])
                    ).status_code
                    != 503
                    else None
                ),
                "the first applied revision",
            )
            assert ok.status_code == 200, ok.text
            _wait(lambda: _stored_workloads(s, "edge-1"), "edge-1 given hello")
            with s.admin() as c:
                assert c.post("/v1/nodes/edge-1/reset").status_code == 200
            _wait(lambda: _stored_workloads(s, "edge-1") == [], "edge-1 emptied", timeout=10)
        finally:
            s.stop()
