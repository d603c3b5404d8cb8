"""Benchmark: what signing desired state costs the reconciler and the node.

    .venv/bin/python bench/signing.py [--docs 10000] [--workloads 3]

Prints, for a realistic document (``--workloads`` process workloads with run, health and
versionProbe):

- sign: one ``DocumentSigner.sign`` (canonical JSON + Ed25519 + the envelope as bytes);
- verify: one ``agent.trust.check`` on the parsed envelope (signature, node, expiry,
  generation against the last accepted document, local policy), plus the JSON parse;
- the extra bytes per document (envelope vs plain document);
- re-sign N: a ``DesiredHub`` holding N nodes' documents, all past half-life, re-signed
  through its ETag path (what the reconciler does on the polls after a refresh is due).

Wall and CPU time (``time.process_time``) are shown; on a shared machine CPU is steadier.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.policy import LocalPolicy
from agent.trust import Accepted, check
from fleetkeeper_common.canonical import canonical_json
from fleetkeeper_common.signing import keyid
from reconciler.api.hub import DesiredHub
from reconciler.signing import DocumentSigner
from reconciler.store import open_store


def document(node: str, generation: int, workloads: int) -> dict[str, Any]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": node,
        "generation": generation,
        "revision": "a" * 40,
        "approval": {"kind": "merge", "ref": "b" * 40, "signers": []},
        "workloads": [
            {
                "name": f"agent-{i}",
                "kind": "process",
                "version": f"1.{i}.0",
                "artifact": {
                    "platform": "linux/amd64",
                    "url": f"https://artifacts.example/agent-{i}/1.{i}.0/agent-linux-amd64.tar.gz",
                    "sha256": "c" * 64,
                    "size": 12345678,
                },
                "run": {
                    "command": [f"bin/agent-{i}", "--port", str(9000 + i), "--node", node],
                    "env": {"LOG_LEVEL": "info"},
                },
                "health": {"http": f"http://127.0.0.1:{9000 + i}/healthz", "timeoutSeconds": 60},
                "versionProbe": [f"bin/agent-{i}", "--version"],
            }
            for i in range(workloads)
        ],
    }


def timed(fn: Any, n: int) -> tuple[float, float]:
    """Median wall µs per call over ``n`` calls, and CPU µs per call."""
    walls = []
    cpu0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t)
    return statistics.median(walls) * 1e6, (time.process_time() - cpu0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--workloads", type=int, default=3)
    args = ap.parse_args()

    key = Ed25519PrivateKey.generate()
    signer = DocumentSigner(key, 86400)
    trusted = {keyid(key.public_key()): key.public_key()}
    doc = document("gpu-1", 2, args.workloads)
    now = time.time()
    body = signer.sign(doc, now).body
    last = {**document("gpu-1", 1, args.workloads)}
    plain = canonical_json(doc).encode()

    def verify() -> None:
        got = check(
            json.loads(body),
            node="gpu-1",
            trusted=trusted,
            last=last,
            policy=LocalPolicy(),
            now=now,
        )
        assert isinstance(got, Accepted)

    sign_wall, sign_cpu = timed(lambda: signer.sign(doc, now), 2000)
    verify_wall, verify_cpu = timed(verify, 2000)
    print(f"document: {args.workloads} workloads, {len(plain)} bytes plain, {len(body)} signed")
    print(f"extra bytes per document: {len(body) - len(plain)}")
    print(f"sign:   {sign_wall:7.1f} µs wall (median), {sign_cpu:7.1f} µs CPU per document")
    print(f"verify: {verify_wall:7.1f} µs wall (median), {verify_cpu:7.1f} µs CPU per document")

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 's.db'}")
        try:
            records = [
                store.put_desired(f"n{i:05d}", document(f"n{i:05d}", 0, args.workloads))[0]
                for i in range(args.docs)
            ]
            clock = [now]
            hub = DesiredHub(store, records, signer, clock=lambda: clock[0])
            clock[0] += 86400 / 2  # every signature now due for its refresh
            wall0, cpu0 = time.perf_counter(), time.process_time()
            etags = [hub.etag(r.node) for r in records]
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            assert all("." in e for e in etags)
            print(
                f"re-sign {args.docs} documents: {wall * 1e3:7.1f} ms wall, {cpu * 1e3:7.1f} ms CPU"
            )
        finally:
            store.close()


if __name__ == "__main__":
    main()
