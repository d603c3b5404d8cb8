"""How a failed download is classified (docs/agent.md, "Failed versions are remembered;
transient failures are retried"): against real sockets on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.download import fetch
from agent.errors import DownloadError, Unreachable
from tests.helpers.artifact_server import free_port


@pytest.fixture
def answering() -> Iterator[str]:
    """A server answering ``/<code>`` with that HTTP status."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(int(self.path.strip("/")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _fetch(url: str, dest: Path, size: int = 10) -> None:
    fetch(url, dest, sha256="0" * 64, size=size, timeout=5)


@pytest.mark.parametrize("code", [500, 502, 503, 504, 408, 429])
def test_server_not_ready_is_transient(answering: str, tmp_path: Path, code: int) -> None:
    with pytest.raises(Unreachable, match=f"HTTP {code}"):
        _fetch(f"{answering}/{code}", tmp_path)


@pytest.mark.parametrize("code", [404, 403, 410])
def test_server_saying_no_is_a_version_failure(answering: str, tmp_path: Path, code: int) -> None:
    with pytest.raises(DownloadError, match=f"HTTP {code}; check the artifact URL") as info:
        _fetch(f"{answering}/{code}", tmp_path)
    assert not isinstance(info.value, Unreachable)


def test_connection_refused_is_transient(tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match="(?i)connection refused"):
        _fetch(f"http://127.0.0.1:{free_port()}/a.tar.gz", tmp_path)


def test_not_enough_disk_is_transient(answering: str, tmp_path: Path) -> None:
    with pytest.raises(Unreachable, match="not enough disk space"):
        _fetch(f"{answering}/200", tmp_path, size=1 << 62)
