"""Bad input over a real socket: every refusal is a 4xx with a JSON {"error", "message"}."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers.server import ApiHarness, api_harness, register_doc

LIMIT = 4096


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(tmp_path, max_body_bytes=LIMIT) as harness:
        yield harness


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, str]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "message"} and body["message"]
    if code is not None:
        assert body["error"] == code
    return body


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 400, "bad-json"),
        (b"{not json", 400, "bad-json"),
        (b"\xff\xfe\x00", 400, "bad-json"),
        (b"[" * 5000, 413, "too-large"),
        (b"[1, 2]", 422, "invalid"),
        (b'"a string"', 422, "invalid"),
        (b'{"node": "gpu-1"}', 422, "invalid"),
        (b'{"node": "gpu-1", "generation": "1", "workloads": []}', 422, "invalid"),
        (b'{"node": "gpu-1", "generation": -1, "workloads": []}', 422, "invalid"),
        (b'{"node": "gpu-1", "generation": 1, "workloads": [{"name": 5}]}', 422, "invalid"),
        (b'{"node": "gpu-1", "generation": 1, "workloads": [], "extra": 1}', 422, "invalid"),
    ],
)
def test_bad_status_bodies(api: ApiHarness, content: bytes, status: int, code: str) -> None:
    token = api.register("gpu-1")
    with api.client(token) as c:
        r = c.post(
            "/v1/nodes/gpu-1/status", content=content, headers={"content-type": "application/json"}
        )
    _error(r, status, code)
    assert list(api.ctx.store.reports()) == []


def test_deeply_nested_json_is_refused_not_crashed(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    with api.client(token) as c:
        r = c.post("/v1/nodes/gpu-1/status", content=b"[" * 2000 + b"]" * 2000)
    _error(r, 400, "bad-json")  # 4000 bytes, under the limit: the parser refuses the depth


def test_wrong_types_in_register(api: ApiHarness) -> None:
    with api.client(api.bootstrap_token) as c:
        r = c.post("/v1/nodes/gpu-1/register", json=register_doc("gpu-1", memoryGiB="lots"))
        body = _error(r, 422, "invalid")
        assert "memoryGiB" in body["message"]
        r = c.post("/v1/nodes/gpu-1/register", json=register_doc("gpu-1", platform="windows/x86"))
        _error(r, 422, "invalid")
    assert list(api.ctx.store.nodes()) == []


def test_oversized_body_with_honest_length(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    big = b'{"node": "gpu-1", "generation": 1, "workloads": [], "x": "' + b"a" * LIMIT + b'"}'
    with api.client(token) as c:
        _error(c.post("/v1/nodes/gpu-1/status", content=big), 413, "too-large")


def test_oversized_chunked_body_without_length(api: ApiHarness) -> None:
    token = api.register("gpu-1")

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1024

    with api.client(token) as c:
        r = c.post("/v1/nodes/gpu-1/status", content=chunks())
    _error(r, 413, "too-large")


def _read_response(s: socket.socket) -> bytes:
    """Headers and the whole body: they may arrive in separate TCP segments."""
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = s.recv(4096)
        if not chunk:
            return reply
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lengths = [
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < (lengths[0] if lengths else 0):
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_raw_chunked_body_over_limit(api: ApiHarness) -> None:
    """No Content-Length at all: the limit is enforced on the bytes as they arrive."""
    token = api.register("gpu-1")
    url = urlsplit(api.url)
    body = b" " * (LIMIT * 3)
    request = (
        f"POST /v1/nodes/gpu-1/status HTTP/1.1\r\nHost: {url.hostname}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (1024, body[i : i + 1024]) for i in range(0, len(body), 1024)
    )
    with socket.create_connection((url.hostname, url.port), timeout=5) as s:
        s.sendall(request + chunked + b"0\r\n\r\n")
        reply = _read_response(s)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"too-large"' in reply


def test_unknown_paths_and_methods_answer_json(api: ApiHarness) -> None:
    with api.client() as c:
        _error(c.get("/v1/nope"), 404, "not-found")
        _error(c.delete("/v1/fleet"), 405, "method-not-allowed")
        _error(c.get("/v1/nodes/UPPER/desired"), 404)
        _error(c.post("/v1/nodes/a..b!/register", json={}), 404)


def test_missing_or_malformed_authorization(api: ApiHarness) -> None:
    api.register("gpu-1")
    with httpx.Client(base_url=api.url) as c:
        for header in ("", "Bearer", "Basic abc", "token", "Bearer a b"):
            r = c.get("/v1/nodes/gpu-1/desired", headers={"Authorization": header})
            _error(r, 401, "unauthorized")
