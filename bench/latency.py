"""Benchmark: git push -> a long-polling agent holds the new desired document.

    .venv/bin/python bench/latency.py [--pushes 50]

``fleetkeeper serve`` watches a local bare repo. Each round merges a new release version
(``--no-ff``, so it is approved) in a work tree and runs ``git push``; a client that
long-polls ``GET /v1/nodes/node-0/desired?wait=30`` with its ETag (as the agent does)
measures from just before ``git push`` starts until it holds the document naming the new
version, then reports it healthy (as a converged agent would). Prints p50/p99.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import (  # noqa: E402
    fleet_repo,
    git,
    join_token,
    merge_change,
    percentile,
    register_body,
    start,
)

NODE = "node-0"


def release(version: str) -> dict[str, object]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": "bench-agent",
        "version": version,
        "artifacts": [
            {
                "platform": "linux/amd64",
                "url": f"file:///srv/bench-agent-{version}.tar.gz",
                "sha256": hashlib.sha256(version.encode()).hexdigest(),
                "size": 1024,
            }
        ],
        "run": {"command": ["bin/bench-agent"]},
        "targets": {"roles": ["inference"]},
        "rollout": {"batchSize": 1, "soakSeconds": 0, "timeoutSeconds": 600},
    }


def versions_of(doc: dict[str, object]) -> list[str]:
    workloads = doc.get("workloads")
    assert isinstance(workloads, list)
    return [str(w["version"]) for w in workloads if isinstance(w, dict)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pushes", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fk-bench-latency-"))
    bare, work = fleet_repo(tmp)
    server = start(tmp, bare, poll_interval=3600)  # only the ref watcher can notice a push
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post(
                f"/v1/nodes/{NODE}/register",
                json=register_body(NODE),
                headers={"Authorization": f"Bearer {join_token(server, 1)}"},
            )
            r.raise_for_status()
            token = r.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        client = httpx.Client(base_url=server.url, timeout=60, headers=auth)
        doc = client.get(f"/v1/nodes/{NODE}/desired")
        etag = doc.headers["etag"]
        latencies: list[float] = []
        for i in range(1, args.pushes + 1):
            version = f"1.0.{i}"
            merge_change(
                work,
                {f"releases/bench-agent/{version}.yaml": release(version)},
                f"bench-agent {version}",
                i,
            )
            got: dict[str, float] = {}

            def poll(want: str = version, got: dict[str, float] = got) -> None:
                nonlocal etag
                while True:
                    r = client.get(
                        f"/v1/nodes/{NODE}/desired",
                        params={"wait": 30},
                        headers={"If-None-Match": etag},
                    )
                    if r.status_code == 200:
                        etag = r.headers["etag"]
                        if want in versions_of(r.json()):
                            got["at"] = time.perf_counter()
                            return
                    elif r.status_code != 304:
                        raise SystemExit(f"unexpected {r.status_code}: {r.text}")

            t = threading.Thread(target=poll)
            t.start()
            time.sleep(0.05)  # the poller is waiting
            pushed_at = time.perf_counter()
            git(work, "push", "-q", "origin", "main")
            t.join(timeout=60)
            if "at" not in got:
                raise SystemExit(
                    f"push {i}: version {version} never reached the node\n"
                    + server.log.read_text()[-3000:]
                )
            latencies.append((got["at"] - pushed_at) * 1000)
            report = {
                "node": NODE,
                "generation": 0,
                "workloads": [
                    {"name": "bench-agent", "version": version, "phase": "Healthy", "healthy": True}
                ],
            }
            client.post(f"/v1/nodes/{NODE}/status", json=report).raise_for_status()
        client.close()
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        print(
            f"push -> agent holds the new desired document, {len(latencies)} pushes: "
            f"p50 {p50:.0f} ms, p99 {p99:.0f} ms, min {min(latencies):.0f} ms, "
            f"max {max(latencies):.0f} ms (target p50 < 150 ms: "
            f"{'OK' if p50 < 150 else 'SLOW'})"
        )
    finally:
        code = server.stop()
        if code != 0:
            print(f"fleetkeeper serve exited with {code}; log: {server.log}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
