"""Convergence figures: merged release → every node reports the new version healthy.

    .venv/bin/python bench/converge.py [SIZE_MB]

Runs a real ``fleetkeeper serve`` on a local fleet repo, three real agents, and a local
artifact server on 127.0.0.1. Installs 1.0.0 first (warm-up), then merges 1.1.0 (a
SIZE_MB artifact, default 50, batchSize 1, soakSeconds 0) and prints the time from the
merge to each node reporting 1.1.0 healthy, with the agent's own phase timings (detect,
download, verify, unpack, flip, restart, prove). Then compares the agent's SHA-256 file
verification throughput with raw ``hashlib.file_digest`` on the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

for key, value in {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@fleet.test",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@fleet.test",
    "GIT_CONFIG_NOSYSTEM": "1",
}.items():
    os.environ.setdefault(key, value)

from agent.download import sha256_file  # noqa: E402
from tests.helpers.agents import AgentProc, running_agents  # noqa: E402
from tests.helpers.artifact_server import ArtifactServer, free_port  # noqa: E402
from tests.helpers.artifacts import build_program  # noqa: E402
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc  # noqa: E402
from tests.helpers.server import start_server  # noqa: E402

NODES = ("node-a", "node-b", "node-c")
PHASES = ("detect", "download", "verify", "unpack", "flip", "restart", "prove")


def release(version: str, sha256: str, size: int, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": "hello",
        "version": version,
        "artifacts": [{"platform": "linux/amd64", "url": url, "sha256": sha256, "size": size}],
        "run": {"command": ["bin/hello", "--port", "${node.labels.port}"]},
        "health": {"http": "http://127.0.0.1:${node.labels.port}/healthz", "timeoutSeconds": 30},
        "versionProbe": ["bin/hello", "--version"],
        "targets": {"roles": ["inference"]},
        "rollout": {"batchSize": 1, "soakSeconds": 0, "timeoutSeconds": 120, "onFailure": "halt"},
    }


def healthy_at(agent: AgentProc, version: str) -> bool:
    w = agent.workload("hello")
    return bool(w and w["phase"] == "Healthy" and w["version"] == version and w["healthy"])


def last_timings(agent: AgentProc, version: str) -> dict[str, float]:
    lines = (agent.state_dir / "timings.jsonl").read_text().splitlines()
    for line in reversed(lines):
        doc = json.loads(line)
        if doc["version"] == version and doc["ok"]:
            return dict(doc)
    return {}


def roll(
    tmp: Path, repo: FleetRepo, srv: ArtifactServer, agents: list[AgentProc], version: str, mb: int
) -> None:
    art = build_program(tmp / "dist", "hello", version, padding=mb << 20)
    doc = release(version, art.sha256, art.size, srv.url(art.path.name))
    merged = time.time()
    repo.change({f"releases/hello/{version}.yaml": doc}, f"release hello {version}")
    merged_done = time.time()
    done: dict[str, float] = {}
    while len(done) < len(agents):
        for a in agents:
            if a.node not in done and healthy_at(a, version):
                done[a.node] = time.time()
        if time.time() - merged > 120:
            raise SystemExit(f"{version} did not converge: {[a.report() for a in agents]}")
        time.sleep(0.01)
    took = merged_done - merged
    print(f"\n{version}: artifact {art.size / 1e6:.1f} MB; merge commit took {took:.2f}s")
    # verify is the final digest comparison: the bytes are hashed while they stream in.
    header = "node      healthy@  " + "  ".join(f"{p:>8}" for p in PHASES)
    print(header)
    for a in sorted(agents, key=lambda x: done[x.node]):
        t = last_timings(a, version)
        t["detect"] = t.get("received", merged) - merged
        cells = "  ".join(f"{t.get(p, 0.0):8.3f}" for p in PHASES)
        print(f"{a.node:8}  {done[a.node] - merged:7.2f}s  {cells}")
    first, last = min(done.values()) - merged, max(done.values()) - merged
    print(f"first node converged {first:.2f}s after the merge (target <= 3 s)")
    print(f"all {len(agents)} converged {last:.2f}s after the merge (target <= 10 s, batch size 1)")


def hash_throughput(path: Path) -> None:
    size = path.stat().st_size
    best_agent = best_raw = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a = sha256_file(path)
        best_agent = min(best_agent, time.perf_counter() - t)
        t = time.perf_counter()
        with path.open("rb") as fh:
            b = hashlib.file_digest(fh, "sha256").hexdigest()
        best_raw = min(best_raw, time.perf_counter() - t)
        assert a == b
    agent_mbs, raw_mbs = size / best_agent / 1e6, size / best_raw / 1e6
    print(
        f"\nSHA-256 verify of {size / 1e6:.1f} MB: agent {agent_mbs:.0f} MB/s, raw hashlib "
        f"{raw_mbs:.0f} MB/s, ratio {agent_mbs / raw_mbs:.2f} (target >= 0.8)"
    )


def main() -> None:
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["HOME"] = str(tmp)
        ports = {n: free_port() for n in NODES}
        files: dict[str, Any] = {"fleet.yaml": fleet_doc()}
        for n in NODES:
            files[f"nodes/{n}.yaml"] = node_doc(n, labels={"port": str(ports[n])})
        repo = FleetRepo.create(tmp / "fleet", files)
        server = start_server(tmp / "server", repo=repo, extra_config={"pollIntervalSeconds": 1})
        (tmp / "dist").mkdir()
        try:
            with (
                ArtifactServer(tmp / "dist") as srv,
                running_agents(
                    tmp / "agents", server.url, server.bootstrap_token, NODES, pollWaitSeconds=30
                ) as agents,
            ):
                for a in agents:
                    a.wait_for(lambda x: x.report() is not None, timeout=30, what="first report")
                roll(tmp, repo, srv, agents, "1.0.0", mb)
                roll(tmp, repo, srv, agents, "1.1.0", mb)
                hash_throughput(next((tmp / "dist").glob("hello-1.1.0*")))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
