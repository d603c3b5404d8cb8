"""The HTTP limits of a real ``fleetkeeper serve`` (uvicorn's httptools protocol with our
deadlines and header cap, ``reconciler/httpserver.py``), over raw sockets.

The slowloris and slow-POST attacks themselves are in
``test_node_identity.py::test_slowloris_clients_are_disconnected_while_agents_keep_working``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.reports import report_doc
from tests.helpers.server import RunningServer, start_server

MAX_HEADER_BYTES = 4096
MAX_CONNECTIONS = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    limits = {
        "maxHeaderBytes": MAX_HEADER_BYTES,
        "maxConnections": MAX_CONNECTIONS,
        "headerTimeoutSeconds": 2,
        "bodyTimeoutSeconds": 2,
    }
    running = start_server(tmp_path_factory.mktemp("limits"), extra_config=limits)
    yield running
    assert running.stop() == 0, running.logs()


def _connect(server: RunningServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the next response on ``sock`` (Content-Length framed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 "), head[:200]
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the body"
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def _closed(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def _request(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


def test_headers_over_max_header_bytes_answer_400_and_close(server: RunningServer) -> None:
    pad = b"X-Pad: " + b"y" * 200 + b"\r\n"
    # in one write
    with _connect(server) as sock:
        sock.sendall(_request("/healthz", pad * 30))  # ~6 KiB > 4 KiB
        status, _ = _answer(sock)
        assert status == 400
        assert _closed(sock, 5)
    # one header line that never ends, a chunk at a time: refused before it completes
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ")
        sent = 0
        with pytest.raises((ConnectionError, AssertionError, TimeoutError)):
            while sent < 64 * MAX_HEADER_BYTES:
                sock.sendall(b"z" * 512)
                sent += 512
                time.sleep(0.001)
            raise AssertionError("the server took 256 KiB of one header line")
        assert sent < 4 * MAX_HEADER_BYTES  # cut off near the cap, not at the end
    # just under the cap is served, on a connection that stays usable
    with _connect(server) as sock:
        sock.sendall(_request("/healthz", pad * 15))  # ~3 KiB
        status, _ = _answer(sock)
        assert status == 200
        sock.sendall(_request("/healthz"))
        assert _answer(sock)[0] == 200


def test_a_body_larger_than_max_header_bytes_is_not_counted_as_headers(
    server: RunningServer,
) -> None:
    body = b'{"node": "node-a", "pad": "' + b"p" * (4 * MAX_HEADER_BYTES) + b'"}'
    head = (
        b"POST /v1/nodes/node-a/status HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer not-a-token\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with _connect(server) as sock:
        sock.sendall(head + body)  # headers and a 16 KiB body in one write
        status, _ = _answer(sock)
    assert status == 401  # judged by the application (bad token), not refused as too large


def test_max_connections_answers_503_beyond_the_limit(server: RunningServer) -> None:
    idle = [_connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)  # let the server accept them all
        with _connect(server) as extra:
            extra.sendall(_request("/healthz"))
            status, _ = _answer(extra)
        assert status == 503
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    while True:  # once they are gone, requests are served again
        with _connect(server) as sock:
            sock.sendall(_request("/healthz"))
            if _answer(sock)[0] == 200:
                break
        assert time.monotonic() < deadline, "still 503 after the idle connections closed"
        time.sleep(0.1)


def test_header_and_body_deadlines_close_slow_requests(server: RunningServer) -> None:
    # headers begun and never finished: closed after headerTimeoutSeconds (2 s)
    with _connect(server) as sock:
        t0 = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        assert _closed(sock, 6)
        assert 1.5 < time.monotonic() - t0 < 5
    # complete headers, a body that never comes: closed after bodyTimeoutSeconds
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v1/nodes/node-a/status HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
        )
        t0 = time.monotonic()
        assert _closed(sock, 6)
        assert 1.5 < time.monotonic() - t0 < 5
    # a keep-alive connection: the second request's deadline starts at its first byte
    with _connect(server) as sock:
        sock.sendall(_request("/healthz"))
        assert _answer(sock)[0] == 200
        time.sleep(2.5)  # idle longer than the header timeout: keep-alive governs (20 s)
        sock.sendall(_request("/healthz"))
        assert _answer(sock)[0] == 200


def test_server_runs_the_httptools_protocol(server: RunningServer, tmp_path: Path) -> None:
    from reconciler.config import parse_config
    from reconciler.httpserver import DeadlineHttpTools, server_config

    cfg = parse_config({"repo": "/x", "maxHeaderBytes": 1234}, base=tmp_path, env={})
    http = server_config(object(), cfg, graceful_shutdown=5).http
    assert isinstance(http, type) and issubclass(http, DeadlineHttpTools)
    assert http.max_header_bytes == 1234


def test_a_body_in_pieces_and_pipelined_requests_are_served(server: RunningServer) -> None:
    """The request event, pipeline and flow control are ours (``LightEvent``,
    ``_Pipeline``, ``LightFlowControl``): a body that arrives in three writes, read by the
    status fast path while it waits, and three requests sent in one write."""
    token = server.register("node-b")
    body = json.dumps(report_doc("node-b", [])).encode()
    head = (
        b"POST /v1/nodes/node-b/status HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    with _connect(server) as sock:
        third = len(body) // 3
        sock.sendall(head + body[:third])
        for piece in (body[third : 2 * third], body[2 * third :]):
            time.sleep(0.2)  # the handler is waiting for more of the body
            sock.sendall(piece)
        status, answer = _answer(sock)
        assert status == 200, answer
        assert json.loads(answer)["node"] == "node-b"
        sock.sendall(_request("/healthz") + _request("/nope") + _request("/healthz"))
        stream = b""  # the answers may arrive in one read: parse the stream, not per read
        while len(statuses := re.findall(rb"HTTP/1\.1 (\d{3}) ", stream)) < 3:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {stream[-300:]!r}"
            stream += chunk
        assert statuses == [b"200", b"404", b"200"]  # all three, in order
