"""A real HTTP file server on 127.0.0.1 for artifacts (Range, truncation, counters)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers.ports import free_port

__all__ = ["ArtifactServer", "free_port"]  # free_port: kept importable from here


class ArtifactServer:
    """Threaded HTTP file server on 127.0.0.1 (ephemeral port) serving ``root``.

    Supports ``Range: bytes=N-`` (206), counts GETs per path (``requests``) and records the
    Range headers seen (``ranges``); ``truncate_next(name, at)`` makes the next GET of
    ``name`` announce the full length but close the connection after ``at`` bytes;
    ``ignore_range`` answers 200 with the whole file even when a Range is asked for.
    ``slow_down(name, delay)`` sends ``name`` in 64 KiB chunks ``delay`` seconds apart;
    ``flood(name)`` answers ``name`` with endless zeros and no Content-Length (a server that
    never stops). ``sent[name]`` counts the body bytes written, ``completed[name]`` the
    bodies sent to the end.
    """

    def __init__(self, root: Path, *, ignore_range: bool = False, port: int = 0) -> None:
        self.root = root
        self.ignore_range = ignore_range
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, str | None]] = []
        self.times: list[tuple[str, float]] = []  # (name, unix time) of every GET
        self._truncate: dict[str, list[int]] = {}
        self._slow: dict[str, float] = {}
        self._flood: set[str] = set()
        self.sent: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer._serve(self)

            def log_message(self, *args: Any) -> None:
                pass

        # a fixed ``port`` lets a test hand out URLs before the server "boots"
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def truncate_next(self, name: str, at: int, times: int = 1) -> None:
        with self._lock:
            self._truncate.setdefault(name, []).extend([at] * times)

    def slow_down(self, name: str, delay: float) -> None:
        with self._lock:
            self._slow[name] = delay

    def flood(self, name: str) -> None:
        with self._lock:
            self._flood.add(name)

    def _send_flood(self, h: BaseHTTPRequestHandler, name: str) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        zeros = bytes(1 << 16)
        with contextlib.suppress(OSError):
            while self.sent[name] < 1 << 30:  # a bound, for a client that never stops
                h.wfile.write(zeros)
                with self._lock:
                    self.sent[name] += len(zeros)

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        name = h.path.lstrip("/").split("?")[0]
        rng = h.headers.get("Range")
        with self._lock:
            self.requests[name] += 1
            self.times.append((name, time.time()))
            self.ranges.append((name, rng))
            cut = self._truncate[name].pop(0) if self._truncate.get(name) else None
            delay = self._slow.get(name)
            flood = name in self._flood
        if flood:
            self._send_flood(h, name)
            return
        path = self.root / name
        if not path.is_file() or ".." in name:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        size = path.stat().st_size
        start = 0
        if rng and rng.startswith("bytes=") and not self.ignore_range:
            start = int(rng[6:].split("-")[0] or 0)
            if start >= size:
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{size}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(size - start))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        sent = 0
        with path.open("rb") as fh:
            fh.seek(start)
            while chunk := fh.read(1 << 16):
                if cut is not None and sent + len(chunk) > cut:
                    h.wfile.write(chunk[: max(cut - sent, 0)])
                    h.wfile.flush()
                    h.close_connection = True
                    # Drop the socket mid-body, as a broken network would.
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                try:
                    h.wfile.write(chunk)
                    h.wfile.flush()
                except OSError:
                    h.close_connection = True
                    return  # the client went away (e.g. it dropped a stale download)
                sent += len(chunk)
                with self._lock:
                    self.sent[name] += len(chunk)
                if delay:
                    time.sleep(delay)
        with self._lock:
            self.completed[name] += 1

    def __enter__(self) -> ArtifactServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
