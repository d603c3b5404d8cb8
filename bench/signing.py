"""Benchmark: what signing desired state costs the reconciler and the node.

    .venv/bin/python bench/signing.py [--docs 10000] [--workloads 3]

Prints, for a realistic document (``--workloads`` process workloads with run, health and
versionProbe):

- sign: one ``DocumentSigner.sign`` (canonical JSON + Ed25519 + the envelope as bytes);
- verify: one ``agent.trust.check`` on the parsed envelope (signature, node, expiry,
  generation against the last accepted document, local policy), plus the JSON parse;
- the extra bytes per document (envelope vs plain document);
- re-sign N: a ``DesiredHub`` holding N nodes' documents, all past half-life, re-signed
  through its ETag path (what the reconciler does on the polls after a refresh is due);
- fan-out: N changed documents published to the hub with and without a signer (the loop's
  worker thread builds every entry before any agent is woken, so the difference adds to
  merge -> every agent holds the new document); with ``--fanout-seconds`` (that time, as
  ``bench/fleet_scale.py`` measured it) the share of it spent signing;
- level 3 (``approvers`` on the node): a real git repo with an SSH-signed tag, evidence
  attached by ``reconciler.evidence``; the extra bytes per document and the node's whole
  check (envelope, evidence chain, re-rendering, ``ssh-keygen -Y verify`` run each time).

Wall and CPU time (``time.process_time``) are shown; on a shared machine CPU is steadier.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import approvers
from agent.approvers import ApproverKeys
from agent.policy import LocalPolicy
from agent.poll import Checks, approved_by_signers
from agent.trust import Accepted, check
from fleetkeeper_common.age import encrypt, generate_identity
from fleetkeeper_common.canonical import canonical_json
from fleetkeeper_common.fleetfile import release_path, workload_entry
from fleetkeeper_common.signing import keyid
from reconciler.api.hub import DesiredHub
from reconciler.evidence import EvidenceSource
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
    ap.add_argument(
        "--fanout-seconds",
        type=float,
        default=None,
        help="merge -> every agent holds the new document, as bench/fleet_scale.py measured it",
    )
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
            fan_out(store, records, signer, args, now)
        finally:
            store.close()
    level3(signer, args.workloads, now)
    level3(signer, args.workloads, now, with_files=True)


def fan_out(store: Any, records: list[Any], signer: DocumentSigner, args: Any, now: float) -> None:
    """Publish N changed documents, plain then signed: the signing share of a fan-out."""
    changed = [
        replace(r, generation=1, etag=f'"1-{r.node}"', document=document(r.node, 1, args.workloads))
        for r in records
    ]
    took: dict[str, tuple[float, float]] = {}
    for name, hub_signer in (("plain", None), ("signed", signer)):
        hub = DesiredHub(store, (), hub_signer, clock=lambda: now)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        hub.publish_from_thread(changed)  # not serving: entries are built and installed here
        took[name] = (time.perf_counter() - wall0, time.process_time() - cpu0)
    wall = took["signed"][0] - took["plain"][0]
    cpu = took["signed"][1] - took["plain"][1]
    print(
        f"fan-out of {len(changed)} changed documents through the hub: plain "
        f"{took['plain'][0] * 1e3:.0f} ms wall / {took['plain'][1] * 1e3:.0f} ms CPU, signed "
        f"{took['signed'][0] * 1e3:.0f} ms wall / {took['signed'][1] * 1e3:.0f} ms CPU "
        f"(signing: {wall * 1e3:.0f} ms wall, {cpu * 1e3:.0f} ms CPU)"
    )
    if args.fanout_seconds:
        # CPU time: what signing costs on a core of its own, steadier on a shared machine
        print(
            f"signing share of a {args.fanout_seconds:.2f} s merge -> every agent holds the "
            f"new document: {100 * cpu / args.fanout_seconds:.1f}% (CPU), "
            f"{100 * wall / args.fanout_seconds:.1f}% (wall, this run's load)"
        )


def _git(cwd: Path, *argv: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@fleet.test",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@fleet.test",
    }
    out = subprocess.run(["git", *argv], cwd=cwd, env=env, capture_output=True, check=True)
    return out.stdout.decode().strip()


def level3(signer: DocumentSigner, workloads: int, now: float, *, with_files: bool = False) -> None:
    """Evidence from a real SSH-signed tag: its size, and the node's check with ssh-keygen.
    ``with_files``: the first release also has two config files (a 4 KiB template, a
    1 KiB JSON) and an age secret, whose blobs the evidence then carries too."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = root / "fleet"
        repo.mkdir()
        _git(repo, "init", "-q", "-b", "main")
        key = root / "approver"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        allowed = root / "allowed_signers"
        allowed.write_text(f'alice namespaces="git" {Path(f"{key}.pub").read_text()}')
        plain = document("gpu-1", 2, workloads)
        releases = []
        for w in plain["workloads"]:
            release = {
                "apiVersion": "fleetkeeper/v1",
                "kind": "Release",
                "agent": w["name"],
                "version": w["version"],
                "artifacts": [w["artifact"]],
                "run": {**w["run"], "command": [*w["run"]["command"][:-1], "${node.name}"]},
                "health": w["health"],
                "versionProbe": w["versionProbe"],
                "targets": {"roles": ["inference"]},
            }
            releases.append(release)
        files: dict[str, bytes] = {}
        if with_files:
            files = {
                "config/agent-0/soul.md": b"I am ${node.name}. " * 215,
                "config/agent-0/tools.json": b'{"tools": [' + b'"t", ' * 200 + b'"t"]}\n',
                "secrets/agent-0/key.age": encrypt(b"sk-bench", [generate_identity().recipient]),
            }
            releases[0]["config"] = {
                "files": [
                    {"from": "config/agent-0/soul.md", "to": "soul.md", "template": True},
                    {"from": "config/agent-0/tools.json", "to": "tools.json"},
                ]
            }
            releases[0]["secrets"] = [
                {"name": "KEY", "from": "secrets/agent-0/key.age", "as": "env"}
            ]
        for release in releases:
            path = repo / release_path("process", release["agent"], release["version"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(release))
        for rel, data in files.items():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / rel).write_bytes(data)
        rendered = [
            workload_entry(r, "gpu-1", {}, "linux/amd64", files.__getitem__) for r in releases
        ]
        plain = {**plain, "workloads": rendered}
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", "releases")
        sign_args = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"]
        _git(repo, *sign_args, "tag", "-s", "-m", "deploy", "deploy/1")
        doc = {
            **plain,
            "revision": _git(repo, "rev-parse", "HEAD"),
            "approval": {"kind": "tag", "ref": "refs/tags/deploy/1", "signers": ["alice"]},
        }
        with_evidence = DocumentSigner(signer.key, signer.validity, EvidenceSource(str(repo)))
        body = with_evidence.sign(doc, now).body
        bare = signer.sign(doc, now).body
        sign_e, _ = timed(lambda: with_evidence.sign(doc, now), 500)
        trusted = {keyid(signer.key.public_key()): signer.key.public_key()}
        checks = Checks(
            "gpu-1",
            None,
            LocalPolicy(),
            approvers=ApproverKeys(allowed, None),
            platform="linux/amd64",
            gnupg_home=root / "gnupg",
        )

        def verify() -> None:
            approvers._cache.clear()  # ssh-keygen runs every time, as for a new document
            got = check(
                json.loads(body),
                node="gpu-1",
                trusted=trusted,
                last=None,
                policy=LocalPolicy(),
                now=now,
            )
            assert isinstance(got, Accepted)
            why = approved_by_signers(got.document, checks)
            assert why is None, why

        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, cpu = timed(verify, 30)
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (
            children1.ru_utime + children1.ru_stime - children0.ru_utime - children0.ru_stime
        ) / 30
        print(
            f"level 3: evidence adds {len(body) - len(bare)} bytes per document "
            f"({len(bare)} -> {len(body)}, {workloads} release files under one tag"
            f"{', one with 2 config files and an age secret' if with_files else ''}); "
            f"sign with evidence {sign_e:.1f} µs wall (median)"
        )
        print(
            f"level 3 verify on the node (envelope + evidence + ssh-keygen -Y verify): "
            f"{wall / 1e3:.1f} ms wall (median), {cpu / 1e3:.1f} ms agent CPU "
            f"+ {child_cpu * 1e3:.1f} ms ssh-keygen CPU"
        )


if __name__ == "__main__":
    main()
