"""Pieces of `make demo`: a tiny agent program packaged per version, a local artifact
server, and the demo's copy of example-fleet-repo/ adapted to this machine.

Independent of the tests package and of ``agent/``: it only writes files and serves them.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import shutil
import tarfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "example-fleet-repo"
AGENT = "inference-agent"
DEMO_NODES = ("gpu-1", "vps-1", "lab-1")  # all linux/amd64: they run on this machine
DROPPED_NODES = ("mac-studio-1", "mac-mini-1")

# The program every demo release ships: answers --version and serves /healthz on --port.
PROGRAM = '''#!/usr/bin/env python3
"""inference-agent (fleetkeeper demo build {version}): a stand-in for a real agent."""
import argparse, json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "{version}"

p = argparse.ArgumentParser(prog="inference-agent")
p.add_argument("--version", action="store_true")
p.add_argument("--port", type=int, default=8080)
p.add_argument("--node", default="?")
a = p.parse_args()
if a.version:
    print("inference-agent " + VERSION)
    sys.exit(0)


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"status": "ok", "version": VERSION, "node": a.node}}).encode()
        self.send_response(200 if self.path in ("/healthz", "/") else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer(("127.0.0.1", a.port), H).serve_forever()
'''


@dataclass(frozen=True)
class Artifact:
    version: str
    path: Path
    sha256: str
    size: int


def build_artifact(out_dir: Path, version: str) -> Artifact:
    """inference-agent-<version>-linux-amd64.tar.gz holding bin/inference-agent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = PROGRAM.format(version=version).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("bin/inference-agent")
        info.size, info.mode, info.mtime = len(data), 0o755, 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    path = out_dir / f"{AGENT}-{version}-linux-amd64.tar.gz"
    path.write_bytes(blob)
    return Artifact(version, path, hashlib.sha256(blob).hexdigest(), len(blob))


class ArtifactServer:
    """Serves one folder over HTTP on 127.0.0.1 (an ephemeral port) from a thread."""

    def __init__(self, root: Path) -> None:
        root_dir = str(root)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=root_dir, **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ArtifactServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _dump(path: Path, doc: Mapping[str, Any], comment: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    path.write_text(head + yaml.safe_dump(dict(doc), sort_keys=False))


def write_fleet(work: Path, ports: Mapping[str, int], soak_seconds: int) -> list[str]:
    """The demo's fleet files in ``work`` (no releases yet); returns what was changed and why."""
    changes = []
    for name in ("README.md", ".pre-commit-config.yaml"):
        if (EXAMPLE / name).exists():
            shutil.copy2(EXAMPLE / name, work / name)
    fleet = yaml.safe_load((EXAMPLE / "fleet.yaml").read_text())
    fleet["allowInsecureURLs"] = True
    rollout = fleet.setdefault("defaults", {}).setdefault("rollout", {})
    rollout.update({"soakSeconds": soak_seconds, "timeoutSeconds": 30})
    _dump(work / "fleet.yaml", fleet, "Demo copy of example-fleet-repo/fleet.yaml.")
    changes.append(
        "fleet.yaml: allowInsecureURLs: true (artifacts come from a local http:// server); "
        f"soakSeconds {soak_seconds} and timeoutSeconds 30 instead of 300/900, to fit 2 minutes"
    )
    for node in DEMO_NODES:
        src = EXAMPLE / "nodes" / f"{node}.yaml"
        doc = yaml.safe_load(src.read_text()) if src.exists() else None
        if doc is None:
            doc = yaml.safe_load((EXAMPLE / "nodes" / "vps-1.yaml").read_text())
            doc.update(name=node, accelerator="cpu", memoryGiB=8)
        roles = list(doc.get("roles") or [])
        if "inference" not in roles:
            roles.insert(0, "inference")
        doc["roles"] = roles
        doc["platform"] = "linux/amd64"
        doc["labels"] = {**(doc.get("labels") or {}), "port": str(ports[node])}
        _dump(work / "nodes" / f"{node}.yaml", doc, f"Demo node {node} (linux/amd64).")
    changes.append(
        f"nodes: dropped {', '.join(DROPPED_NODES)} (darwin/arm64: no Mac here to run them); "
        "kept gpu-1 and vps-1 (linux/amd64) and added lab-1, so three agents run on this "
        "machine; all three get the inference role and their own free port label"
    )
    changes.append(
        "releases: only inference-agent, built locally; it targets role inference without "
        "the cuda/metal selector (this machine has no GPU). coding-agent and the qwen model "
        "are left out: their artifacts are illustrative URLs and the model is 4.7 GB"
    )
    return changes


def release_doc(
    art: Artifact, base_url: str, *, sha256: str | None = None, batch_size: int = 2
) -> dict[str, Any]:
    """releases/inference-agent/<version>.yaml from the example release, pointing at ``art``."""
    examples = sorted((EXAMPLE / "releases" / AGENT).glob("*.yaml"))
    doc: dict[str, Any] = yaml.safe_load(examples[-1].read_text())
    doc["version"] = art.version
    doc["description"] = f"Inference proxy {art.version} (demo build)"
    doc["artifacts"] = [
        {
            "platform": "linux/amd64",
            "url": f"{base_url}/{art.path.name}",
            "sha256": sha256 or art.sha256,
            "size": art.size,
        }
    ]
    doc["targets"] = {"roles": ["inference"]}
    doc["health"] = {**doc.get("health", {}), "timeoutSeconds": 10}
    doc["rollout"] = {"canary": ["gpu-1"], "batchSize": batch_size, "onFailure": "halt"}
    return doc


def write_release(work: Path, doc: Mapping[str, Any]) -> str:
    rel = f"releases/{AGENT}/{doc['version']}.yaml"
    _dump(work / rel, doc, f"inference-agent {doc['version']} (fleetkeeper demo)")
    return rel
