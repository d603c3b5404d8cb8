"""A real reconciler for tests: ``fleetkeeper serve`` as a subprocess on 127.0.0.1:0.

Reusable by every engineer (agent, rollout, status, dashboard tests)::

    from tests.helpers.server import RunningServer, running_server

    @pytest.fixture
    def fleet_server(tmp_path: Path) -> Iterator[RunningServer]:
        with running_server(tmp_path) as server:   # or start_server(...) for more control
            yield server

    def test_something(fleet_server: RunningServer) -> None:
        token = fleet_server.register("gpu-1")
        with fleet_server.client(token) as c:
            c.get("/v1/nodes/gpu-1/desired")

``running_server(tmp)`` starts on a fleet repo (``FleetRepo`` from ``tests.helpers.fleet``) with
three nodes and no releases; ``start_server(tmp, ...)`` / ``running_server(...)`` take your
own repo (a local path, or ``repo_url="file://..."`` to exercise the mirror + webhook
path), extra config keys and environment. The server is ready (``/readyz`` answered 200)
when you get it; teardown sends SIGTERM and asserts a clean exit (code 0).

``serve_app_in_thread(app)`` runs an ASGI app under uvicorn in a thread of the test
process (for API tests that write to the store directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from tests.helpers.artifact_server import free_port
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

DEFAULT_FILES: dict[str, dict[str, Any]] = {
    "fleet.yaml": fleet_doc(),
    **{f"nodes/{n}.yaml": node_doc(n) for n in ("node-a", "node-b", "node-c")},
}


def register_doc(node: str, **facts: Any) -> dict[str, Any]:
    """A schema-valid register body for ``node`` (override any fact by keyword)."""
    doc: dict[str, Any] = {
        "node": node,
        "platform": "linux/amd64",
        "accelerator": "cpu",
        "roles": ["inference"],
        "labels": {},
        "agentVersion": "0.1.0",
        "hostname": node,
        "memoryGiB": 8,
    }
    doc.update(facts)
    return doc


@dataclass
class RunningServer:
    url: str
    admin_token: str
    bootstrap_token: str
    webhook_secret: str
    state_dir: Path
    config_path: Path
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    repo: FleetRepo | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def admin(self) -> httpx.Client:
        return self.client(self.admin_token)

    def register(self, node: str, credential: str | None = None, **facts: Any) -> str:
        """Register ``node`` with ``credential`` (default: the bootstrap token); returns (and
        remembers) its node token."""
        with self.client(credential or self.bootstrap_token) as c:
            r = c.post(f"/v1/nodes/{node}/register", json=register_doc(node, **facts))
        assert r.status_code == 200, r.text
        token = str(r.json()["token"])
        self.tokens[node] = token
        return token

    def create_token(self, **body: Any) -> dict[str, Any]:
        """``POST /v1/tokens`` with the admin token; the answer carries the secret."""
        with self.admin() as c:
            r = c.post("/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def fleet(self) -> dict[str, Any]:
        with self.admin() as c:
            r = c.get("/v1/fleet")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def logs(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server and wait for it; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"server did not stop within {STOP_TIMEOUT}s of signal {sig}\n{self.logs()}"
            ) from None


def write_config(
    tmp: Path,
    repo: str,
    *,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Path, dict[str, str]]:
    """A reconciler config in ``tmp`` with fresh secrets in files; returns (path, secrets)."""
    tmp.mkdir(parents=True, exist_ok=True)
    secret_values = {
        "bootstrap": secrets.token_urlsafe(24),
        "admin": secrets.token_urlsafe(24),
        "webhook": secrets.token_urlsafe(24),
    }
    for name, value in secret_values.items():
        p = tmp / f"{name}.secret"
        p.write_text(value + "\n")
        p.chmod(0o600)
    config: dict[str, Any] = {
        "repo": repo,
        "branch": "main",
        "approval": {"mode": "merged-pr"},
        "stateDir": str(tmp / "state"),
        "listen": "127.0.0.1:0",
        "bootstrapTokenFile": str(tmp / "bootstrap.secret"),
        "adminTokenFile": str(tmp / "admin.secret"),
        "webhookSecretFile": str(tmp / "webhook.secret"),
        "heartbeatTTLSeconds": 90,
        "pollIntervalSeconds": 60,
    }
    config.update(extra or {})
    path = tmp / "reconciler.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, secret_values


def _wait_listening(proc: subprocess.Popen[bytes], stdout: Path, stderr: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        for line in stdout.read_text(errors="replace").splitlines():
            if line.startswith("listening on "):
                return line.removeprefix("listening on ").strip()
        if proc.poll() is not None:
            raise AssertionError(
                f"fleetkeeper serve exited with {proc.returncode} before listening:\n"
                + stderr.read_text(errors="replace")
            )
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(
        "fleetkeeper serve did not report its address in time\n" + stderr.read_text()
    )


def wait_ready(
    url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = START_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(base_url=url, timeout=5) as c:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode} before ready")
            with contextlib.suppress(httpx.TransportError):
                r = c.get("/readyz")
                if r.status_code == 200:
                    return
                last = r.text
            time.sleep(0.02)
    raise AssertionError(f"{url}/readyz not ready after {timeout}s: {last}")


def start_server(
    tmp: Path,
    *,
    repo: FleetRepo | None = None,
    repo_url: str | None = None,
    extra_config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    ready: bool = True,
) -> RunningServer:
    """Start ``fleetkeeper serve`` on a fleet repo (a fresh default one when none is given)."""
    if repo is None and repo_url is None:
        repo = FleetRepo.create(tmp / "fleet", DEFAULT_FILES)
    source = repo_url or str(repo.path if repo else "")
    config_path, secret_values = write_config(tmp / "reconciler-config", source, extra=extra_config)
    proc, url, stdout, stderr = _launch(config_path, tmp / "serve", ready=ready, env=env)
    return RunningServer(
        url=url,
        admin_token=secret_values["admin"],
        bootstrap_token=secret_values["bootstrap"],
        webhook_secret=secret_values["webhook"],
        state_dir=tmp / "reconciler-config" / "state",
        config_path=config_path,
        process=proc,
        stdout_path=stdout,
        stderr_path=stderr,
        repo=repo,
    )


FLEET_CONFIG: dict[str, Any] = {"heartbeatTTLSeconds": 5, "pollIntervalSeconds": 1}


def start_fleet(
    tmp: Path,
    nodes: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> tuple[FleetRepo, RunningServer, dict[str, int]]:
    """A fleet repo declaring ``nodes`` and ``fleetkeeper serve`` on it (``FLEET_CONFIG``
    unless ``extra_config`` overrides it). Each node is labelled with a free ``port`` (its
    workload's, returned per node) besides ``labels``."""
    ports = {n: free_port() for n in nodes}
    files: dict[str, Any] = {"fleet.yaml": fleet_doc()}
    for n in nodes:
        files[f"nodes/{n}.yaml"] = node_doc(n, labels={"port": str(ports[n]), **(labels or {})})
    repo = FleetRepo.create(tmp / "fleet", files)
    server = start_server(
        tmp / "server", repo=repo, extra_config={**FLEET_CONFIG, **(extra_config or {})}
    )
    return repo, server, ports


def _launch(
    config_path: Path, prefix: Path, *, ready: bool = True, env: Mapping[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    stdout, stderr = prefix.with_suffix(".stdout"), prefix.with_suffix(".stderr")
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "serve", "--config", str(config_path)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    try:
        url = _wait_listening(proc, stdout, stderr)
        if ready:
            wait_ready(url, proc)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    return proc, url, stdout, stderr


def restart(server: RunningServer, *, ready: bool = True, crash: bool = False) -> RunningServer:
    """Stop ``server`` and start it again on the same config, state directory and secrets
    (a new port). Tokens issued before stay valid. ``crash``: SIGKILL instead of SIGTERM
    (no clean shutdown at all); otherwise exit 0 on SIGTERM is asserted."""
    if crash:
        server.process.kill()
        server.process.wait(timeout=STOP_TIMEOUT)
    else:
        code = server.stop()
        assert code == 0, f"fleetkeeper serve exited with {code} on SIGTERM:\n{server.logs()}"
    n = sum(1 for _ in server.stdout_path.parent.glob("serve*.stdout"))
    proc, url, stdout, stderr = _launch(
        server.config_path, server.stdout_path.parent / f"serve-{n}", ready=ready
    )
    return RunningServer(
        url=url,
        admin_token=server.admin_token,
        bootstrap_token=server.bootstrap_token,
        webhook_secret=server.webhook_secret,
        state_dir=server.state_dir,
        config_path=server.config_path,
        process=proc,
        stdout_path=stdout,
        stderr_path=stderr,
        repo=server.repo,
        tokens=dict(server.tokens),
    )


@contextlib.contextmanager
def running_server(tmp: Path, **kw: Any) -> Iterator[RunningServer]:
    """``start_server`` as a context manager: SIGTERM on exit, asserting exit code 0."""
    server = start_server(tmp, **kw)
    try:
        yield server
    finally:
        code = server.stop()
    assert code == 0, f"fleetkeeper serve exited with {code} on SIGTERM:\n{server.logs()}"


# --- in-process: an ASGI app under uvicorn in a thread -----------------------------------


class _ThreadServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def serve_app_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (ephemeral port) in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = _ThreadServer(
        uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("in-process server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class ApiHarness:
    """The API app alone over a real SQLite store, served in-process (no loop, no git)."""

    url: str
    ctx: Any  # reconciler.api.ApiContext
    bootstrap_token: str
    admin_token: str
    webhook_secret: str
    wakes: list[float] = field(default_factory=list)
    triggers: list[float] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def register(self, node: str, credential: str | None = None, **facts: Any) -> str:
        """Register ``node`` with ``credential`` (default: the bootstrap token)."""
        with self.client(credential or self.bootstrap_token) as c:
            r = c.post(f"/v1/nodes/{node}/register", json=register_doc(node, **facts))
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def create_token(self, **body: Any) -> dict[str, Any]:
        """``POST /v1/tokens`` with the admin token; the answer carries the secret."""
        with self.client(self.admin_token) as c:
            r = c.post("/v1/tokens", json=body)
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def put_desired(self, node: str, version: str = "1.0.0") -> Any:
        """Store a desired document for ``node`` and notify pollers (as the loop does)."""
        rec, _ = self.ctx.store.put_desired(node, desired_doc(node, version))
        self.ctx.hub.notify_from_thread(node)
        return rec


def desired_doc(node: str, version: str = "1.0.0", revision: str = "a" * 40) -> dict[str, Any]:
    """A schema-valid desired-state document with one process workload."""
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": node,
        "generation": 0,
        "revision": revision,
        "approval": {"kind": "merge", "ref": revision, "signers": []},
        "workloads": [
            {
                "name": "agent",
                "kind": "process",
                "version": version,
                "artifact": {
                    "platform": "linux/amd64",
                    "url": f"file:///srv/agent-{version}.tar.gz",
                    "sha256": "0" * 64,
                    "size": 1024,
                },
                "run": {"command": ["bin/agent"]},
            }
        ],
    }


HARNESS_NODES = ("gpu-1", "gpu-2", "node-a", "node-b", "node-l", "a", "b", "c")


@contextlib.contextmanager
def api_harness(
    tmp: Path,
    *,
    declared: tuple[str, ...] = HARNESS_NODES,
    sign: bool = False,
    **settings: Any,
) -> Iterator[ApiHarness]:
    """The API over a fresh store; the applied spec declares ``declared`` in nodes/ (the
    bootstrap token registers only declared names). ``sign``: documents are signed with a
    fresh Ed25519 key, as ``fleetkeeper serve`` does (what a real agent insists on)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from reconciler.api import ApiContext, ApiSettings, create_app
    from reconciler.signing import DocumentSigner
    from reconciler.spec import build_spec
    from reconciler.store import open_store

    values = {
        "bootstrap_token": secrets.token_urlsafe(24),
        "admin_token": secrets.token_urlsafe(24),
        "webhook_secret": secrets.token_urlsafe(24),
    }
    values.update(settings)
    store = open_store(f"sqlite:///{tmp / 'api-state.db'}")
    signer = DocumentSigner(Ed25519PrivateKey.generate()) if sign else None
    ctx = ApiContext.load(store, ApiSettings(**values), signer=signer)
    spec = build_spec({f"nodes/{n}.yaml": node_doc(n) for n in declared})
    ctx.spec = lambda: spec
    wakes: list[float] = []
    triggers: list[float] = []
    ctx.wake = lambda: wakes.append(time.monotonic())
    ctx.trigger = lambda: triggers.append(time.monotonic())
    try:
        with serve_app_in_thread(create_app(ctx)) as url:
            yield ApiHarness(
                url,
                ctx,
                values["bootstrap_token"],
                values["admin_token"],
                values["webhook_secret"],
                wakes,
                triggers,
            )
    finally:
        store.close()
