"""A fake reconciler (the attacker) on 127.0.0.1: it registers any node, serves whatever
desired-state body a test sets, and keeps the status reports it receives.

Signed bodies are made with ``sign_doc`` (single form) or ``sign_batch`` (one signature over
a batch, each envelope with its inclusion proof) and real Ed25519 keys from ``ssh-keygen``
(``new_key``), so an agent's checks run against the same bytes a real reconciler sends.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper_common.signing import batch_envelopes, canonical_bytes, keyid, sign
from tests.helpers.agents import AgentProc, make_agent


def new_key(path: Path) -> Ed25519PrivateKey:
    """A key as an operator makes one: ``ssh-keygen -t ed25519`` (``path`` and ``path.pub``)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
    )
    key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_doc(
    key: Ed25519PrivateKey,
    doc: Mapping[str, Any],
    *,
    issued: float | None = None,
    valid: float = 3600,
) -> bytes:
    issued = time.time() if issued is None else issued
    signed = {**doc, "issuedAt": stamp(issued), "expiresAt": stamp(issued + valid)}
    return canonical_bytes(sign(key, signed))


def sign_batch(
    key: Ed25519PrivateKey,
    docs: list[Mapping[str, Any]],
    *,
    issued: float | None = None,
    valid: float = 3600,
) -> list[bytes]:
    """The batch-form envelopes of ``docs``, one signature over their Merkle root."""
    issued = time.time() if issued is None else issued
    stamps = {"issuedAt": stamp(issued), "expiresAt": stamp(issued + valid)}
    bodies = [canonical_bytes({**doc, **stamps}) for doc in docs]
    return batch_envelopes(key, keyid(key.public_key()), bodies)


class FakeReconciler:
    def __init__(self) -> None:
        self.body = b""
        self.etag = '"0"'
        self.signing_key_line = ""
        self.reports: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, body: bytes, etag: str | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/v1/signing-key":
                    self._send(200, fake.signing_key_line.encode())
                elif self.headers.get("If-None-Match") == fake.etag:
                    time.sleep(0.2)
                    self._send(304, b"", fake.etag)
                else:
                    self._send(200, fake.body, fake.etag)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.endswith("/register"):
                    self._send(200, json.dumps({"node": body["node"], "token": "t" * 40}).encode())
                    return
                fake.reports.append(body)
                self._send(200, json.dumps({"node": body["node"], "generation": 0}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, body: bytes) -> None:
        """Serve ``body`` from now on, under a new ETag."""
        self.body = body
        self.etag = f'"{time.monotonic_ns()}"'

    def last_report(self) -> dict[str, Any] | None:
        return self.reports[-1] if self.reports else None


@contextmanager
def fake_reconciler() -> Iterator[FakeReconciler]:
    fake = FakeReconciler()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def reported_refusal(report: Mapping[str, Any] | None, text: str) -> bool:
    """Whether an agent's status report says its desired document was refused, naming ``text``."""
    judged = (report or {}).get("desired") or {}
    return judged.get("phase") == "Refused" and text in judged.get("message", "")


def level3_agent(
    tmp: Path, node: str, server_url: str, port: int, approvers: Mapping[str, str]
) -> tuple[AgentProc, Ed25519PrivateKey]:
    """An agent (not started) that trusts a fresh reconciler key and checks approvals
    itself (level 3, ``approvers``), fetching artifacts over HTTP only; and that key, to
    sign what ``server_url`` (a fake reconciler) serves it."""
    rkey = new_key(tmp / "reconciler_key")
    trusted = tmp / "trusted_keys"
    trusted.write_text((tmp / "reconciler_key.pub").read_text())
    agent = make_agent(
        tmp,
        node,
        server_url,
        "b" * 32,
        trustedKeys=str(trusted),
        labels={"port": str(port)},
        approvers=dict(approvers),
        allowFileURLs=False,
    )
    return agent, rkey
