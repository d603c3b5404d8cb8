"""Demo step: a fake server offers gpu-1 a release no one approved, and the node refuses it.

The real gpu-1 agent is restarted against a fake reconciler on 127.0.0.1 that serves a
well-formed desired state for gpu-1, signed by a key the node never trusted, whose
``run.command`` is ``/bin/sh -c 'touch MARKER'``. The agent refuses it, the marker never
appears, 0.8.7 keeps serving from gpu-1's own port; then the agent goes back to the real
reconciler.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from demo_procs import DemoFailed

from fleetkeeper_common.signing import canonical_bytes, public_line, sign


def forged_envelope(stored: dict[str, Any], marker: Path) -> bytes:
    """gpu-1's last document, one generation on, running a shell, signed by a stranger."""
    doc = json.loads(json.dumps(stored))
    doc["generation"] = int(doc["generation"]) + 1
    for w in doc["workloads"]:
        w["version"] = "6.6.6"
        w["run"] = {"command": ["/bin/sh", "-c", f"touch {marker}"]}
    now = time.time()
    doc["issuedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    doc["expiresAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 3600))
    return canonical_bytes(sign(Ed25519PrivateKey.generate(), doc))


@contextmanager
def fake_reconciler(body: bytes) -> Iterator[str]:
    attacker_line = public_line(Ed25519PrivateKey.generate().public_key())

    class Handler(BaseHTTPRequestHandler):
        def _send(self, data: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", '"forged"')
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/v1/signing-key":
                self._send(attacker_line.encode())
            else:
                time.sleep(0.5)
                self._send(body)

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._send(json.dumps({"node": "gpu-1", "token": "x" * 40, "generation": 0}).encode())

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def forged_document_refused(
    node_dir: Path,
    port: int,
    restart_agent: Callable[[Path], None],
    note: Callable[[str], None],
) -> None:
    """Point gpu-1's agent at a fake server; show the refusal; point it back."""
    cfg_path = node_dir / "agent.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    state = Path(cfg["stateDir"])
    marker = node_dir / "FORGED-MARKER"
    stored = json.loads((state / "desired.json").read_text())["document"]
    with fake_reconciler(forged_envelope(stored, marker)) as url:
        fake_cfg = node_dir / "agent-fake-server.yaml"
        fake_cfg.write_text(yaml.safe_dump({**cfg, "server": url}))
        restart_agent(fake_cfg)
        note(f"a fake server at {url} offers gpu-1 a release no one approved (6.6.6, /bin/sh)")
        deadline = time.monotonic() + 30
        judged: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                report = json.loads((state / "status.json").read_text())["report"]
                judged = report.get("desired") or {}
            except (OSError, ValueError, KeyError):
                judged = {}
            if judged.get("phase") == "Refused":
                break
            time.sleep(0.2)
        else:
            raise DemoFailed(f"gpu-1 did not refuse the forged document: {judged}")
        serving = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text.strip()
        if marker.exists():
            raise DemoFailed("the forged run.command ran on gpu-1")
        note(f"refused: {judged['message']}")
        note(f"gpu-1 still serves {serving!r}; {marker.name} was never created")
    restart_agent(cfg_path)
    note("gpu-1's agent is back on the real reconciler")
