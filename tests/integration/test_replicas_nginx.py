"""The README's "Running several reconcilers" example, for real: two replicas on one
PostgreSQL behind nginx started with the README's own config block, agents and the CLI
through nginx; a rollout; the leader killed; the next rollout still goes through."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.fleet import fleet_doc, node_doc
from tests.helpers.fleetrepo import FleetRepo
from tests.helpers.replicas import ReplicaSet, replica_set

README = Path(__file__).resolve().parents[2] / "README.md"
NODES = ("node-a", "node-b")


def readme_nginx_block() -> str:
    text = README.read_text()
    section = text.split("## Running several reconcilers", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```nginx\n(.*?)```", section, re.DOTALL)
    assert m is not None, "README: no nginx block under 'Running several reconcilers'"
    return m.group(1)


def nginx_config(tmp: Path, front: int, replicas: list[str]) -> Path:
    """The README block with the test's ports, inside a minimal main config."""
    block = readme_nginx_block()
    for default, url in zip(("127.0.0.1:8701", "127.0.0.1:8702"), replicas, strict=True):
        assert default in block
        block = block.replace(default, url.removeprefix("http://"))
    assert "listen 127.0.0.1:8700;" in block
    block = block.replace("listen 127.0.0.1:8700;", f"listen 127.0.0.1:{front};")
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log warn;\n"
        "worker_processes 1;\nevents { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {tmp}/access.log;\n"
        f"  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;\n"
        f"  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;\n"
        f"{block}\n}}\n"
    )
    return conf


@pytest.fixture
def nginx_bin() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        pytest.skip("nginx is not installed")
    return found


def converged(agents: list[AgentProc], version: str) -> bool:
    return all(a.running("hello") == version and a.phase("hello") == "Healthy" for a in agents)


def roll_out(
    repo: FleetRepo, tmp: Path, art_server: ArtifactServer, version: str, agents: list[AgentProc]
) -> None:
    art = build_program(tmp / "dist", "hello", version)
    doc = hello_release(version, art, art_server.url(art.path.name))
    repo.change({f"releases/hello/{version}.yaml": doc}, f"hello {version}")
    deadline = time.monotonic() + 90
    while not converged(agents, version):
        assert time.monotonic() < deadline, [a.report() for a in agents]
        time.sleep(0.2)


def test_two_replicas_behind_nginx_from_the_readme(
    tmp_path: Path, postgres_url: str, nginx_bin: str
) -> None:
    files: dict[str, Any] = {"fleet.yaml": fleet_doc()}
    for n in NODES:
        files[f"nodes/{n}.yaml"] = node_doc(n, labels={"port": str(free_port())})
    repo = FleetRepo.create(tmp_path / "fleet", files)
    (tmp_path / "dist").mkdir()
    (tmp_path / "nginx").mkdir()
    front = free_port()
    extra = {"heartbeatTTLSeconds": 30, "pollIntervalSeconds": 30}
    with (
        ArtifactServer(tmp_path / "dist") as art_server,
        replica_set(tmp_path / "rs", repo, postgres_url, 2, extra_config=extra) as rs,
    ):
        conf = nginx_config(tmp_path / "nginx", front, rs.urls)
        check = subprocess.run([nginx_bin, "-t", "-c", str(conf)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        proc = subprocess.Popen(
            [nginx_bin, "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # its error_log is a file in tmp
        )
        url = f"http://127.0.0.1:{front}"
        try:
            _through_nginx(url, rs, repo, tmp_path, art_server)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _through_nginx(
    url: str, rs: ReplicaSet, repo: FleetRepo, tmp: Path, art_server: ArtifactServer
) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "nginx did not come up"
        time.sleep(0.1)
    with running_agents(tmp / "agents", url, rs.bootstrap_token, NODES) as agents:
        roll_out(repo, tmp, art_server, "1.0.0", agents)
        leader = rs.wait_leader()
        rs.kill(leader)  # nginx sends everything to the survivor, which now leads
        rs.wait_leader(timeout=4, other_than=leader)
        roll_out(repo, tmp, art_server, "1.0.1", agents)
        out = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "status", "--server", url, "--format", "json"],
            capture_output=True,
            text=True,
            env={**os.environ, "FLEETKEEPER_TOKEN": rs.admin_token},
        )
        assert out.returncode in (0, 4), out.stderr
        assert '"replicas"' in out.stdout and '"leader": true' in out.stdout, out.stdout
