"""Artifacts and an artifact server for agent tests, the demo and benchmarks.

Reusable by every engineer::

    from tests.helpers.artifacts import ArtifactServer, build_program, evil_tarball

    art = build_program(tmp / "dist", "hello", "1.0.0")        # .tar.gz with bin/hello
    with ArtifactServer(tmp / "dist") as srv:
        url = srv.url(art.path.name)                              # http://127.0.0.1:PORT/...
        srv.truncate_next(art.path.name, at=100)                  # next GET drops after 100 B

The program is a real Python script (``#!<sys.executable>``): ``bin/<name> --version``
prints ``<name> <version>``; ``bin/<name> --port N`` (or env ``PORT``) serves ``/healthz``
(200, body ``<name> <version>``) and ``/version`` on 127.0.0.1. Behaviour switches baked in
at build time: ``exit_at_start`` (exits 3 at once), ``unhealthy`` (``/healthz`` answers 500),
``crash_after`` (exits 4 after N seconds), ``probe_version`` (what ``--version`` claims).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import socket
import sys
import tarfile
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROGRAM = '''#!{python}
"""Test workload {name} {version} (built by tests/helpers/artifacts.py)."""
import http.server, os, sys, threading, time
NAME, VERSION, PROBE = {name!r}, {version!r}, {probe!r}
EXIT_AT_START, UNHEALTHY, CRASH_AFTER = {exit_at_start!r}, {unhealthy!r}, {crash_after!r}
args = sys.argv[1:]
if "--version" in args:
    print(f"{{NAME}} {{PROBE}}")
    sys.exit(0)
if EXIT_AT_START:
    print("refusing to start (built with exit_at_start)", file=sys.stderr)
    sys.exit(3)
port = int(args[args.index("--port") + 1]) if "--port" in args else int(os.environ.get("PORT", "0"))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 500 if (UNHEALTHY and self.path == "/healthz") else 200
        body = f"{{NAME}} {{VERSION}}\\n".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
print(f"{{NAME}} {{VERSION}} listening on {{srv.server_address[1]}}", flush=True)
if CRASH_AFTER:
    threading.Timer(CRASH_AFTER, lambda: os._exit(4)).start()
srv.serve_forever()
'''


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str
    size: int

    def artifact_doc(self, url: str, platform: str = "linux/amd64") -> dict[str, Any]:
        """The ``artifact`` block of a release / desired-state workload."""
        return {"platform": platform, "url": url, "sha256": self.sha256, "size": self.size}


def describe(path: Path) -> Artifact:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return Artifact(path, h.hexdigest(), path.stat().st_size)


def program_source(
    name: str,
    version: str,
    *,
    exit_at_start: bool = False,
    unhealthy: bool = False,
    crash_after: float | None = None,
    probe_version: str | None = None,
    python: str = sys.executable,
) -> str:
    return PROGRAM.format(
        python=python,
        name=name,
        version=version,
        probe=probe_version or version,
        exit_at_start=exit_at_start,
        unhealthy=unhealthy,
        crash_after=crash_after,
    )


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def build_program(
    dest: Path,
    name: str,
    version: str,
    *,
    padding: int = 0,
    fmt: str = "tar.gz",
    filename: str | None = None,
    **behaviour: Any,
) -> Artifact:
    """A ``.tar.gz`` (or ``.zip``) with ``bin/<name>``; ``padding`` adds an incompressible
    ``share/padding.bin`` of that many bytes (for download and benchmark sizes)."""
    dest.mkdir(parents=True, exist_ok=True)
    script = program_source(name, version, **behaviour).encode()
    pad = os.urandom(padding) if padding else b""
    path = dest / (filename or f"{name}-{version}.{fmt}")
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            info = zipfile.ZipInfo(f"bin/{name}")
            info.external_attr = (0o100755) << 16
            zf.writestr(info, script)
            if pad:
                zf.writestr("share/padding.bin", pad)
    else:
        # compresslevel 1: big padded artifacts are random bytes anyway.
        with tarfile.open(path, "w:gz", compresslevel=1) as tar:
            _add(tar, f"bin/{name}", script, 0o755)
            _add(tar, "VERSION", f"{version}\n".encode())
            if pad:
                _add(tar, "share/padding.bin", pad)
    return describe(path)


AGENT_LAUNCHER = """#!{python}
# fleetkeeper-agent {version} (built by tests/helpers/artifacts.py): code in ../lib.
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "lib"))
from agent.cli import main
sys.exit(main())
"""


def build_agent(dest: Path, version: str, *, broken: bool = False) -> Artifact:
    """A ``.tar.gz`` of the agent itself (this checkout's ``agent`` and ``schema`` packages
    with ``__version__`` set to ``version``) started by ``bin/fleetkeeper-agent``.
    ``broken``: the daemon dies right after start (its report thread raises), for
    self-update rollback tests."""
    repo = Path(__file__).resolve().parents[2]
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"fleetkeeper-agent-{version}.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for package in ("agent", "schema"):
            for file in sorted((repo / package).rglob("*")):
                if not file.is_file() or "__pycache__" in file.parts:
                    continue
                rel = file.relative_to(repo).as_posix()
                data = file.read_bytes()
                if rel == "agent/__init__.py":
                    text = data.decode()
                    start = text.index("__version__ = ")
                    end = text.index("\n", start)
                    data = (text[:start] + f"__version__ = {version!r}" + text[end:]).encode()
                if rel == "agent/daemon.py" and broken:
                    data = data.replace(
                        b"    def _report_loop(self) -> None:\n",
                        b"    def _report_loop(self) -> None:\n"
                        b"        raise RuntimeError('built broken for a test')\n",
                    )
                _add(tar, f"lib/{rel}", data)
        launcher = AGENT_LAUNCHER.format(python=sys.executable, version=version)
        _add(tar, "bin/fleetkeeper-agent", launcher.encode(), 0o755)
    return describe(path)


def evil_tarball(dest: Path, kind: str, name: str = "evil") -> Artifact:
    """A tarball the agent must refuse: ``dotdot`` (../x), ``absolute`` (/tmp/x),
    ``symlink`` (a link escaping the root), ``device`` (a character device)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{kind}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, f"bin/{name}", program_source(name, "6.6.6").encode(), 0o755)
        if kind == "dotdot":
            _add(tar, "../x", b"escaped\n")
        elif kind == "absolute":
            _add(tar, "/tmp/fleetkeeper-evil-x", b"escaped\n")
        elif kind == "symlink":
            info = tarfile.TarInfo("bin/escape")
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
            tar.addfile(info)
        elif kind == "device":
            info = tarfile.TarInfo("dev/null")
            info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            tar.addfile(info)
        else:
            raise ValueError(f"unknown evil kind {kind!r}")
    return describe(path)


class _Zeros(io.RawIOBase):
    """``n`` zero bytes, read in chunks (a bomb's payload, never held in memory)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def bomb_archive(
    dest: Path, name: str, version: str, unpacked: int, fmt: str = "tar.gz"
) -> Artifact:
    """A decompression bomb: a working ``bin/<name>`` plus ``share/zeros`` of ``unpacked``
    zero bytes (600 MB of zeros compress to about 600 KB)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-bomb.{fmt}"
    script = program_source(name, version).encode()
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            info = zipfile.ZipInfo(f"bin/{name}")
            info.external_attr = (0o100755) << 16
            zf.writestr(info, script)
            with zf.open("share/zeros", "w", force_zip64=True) as out:
                shutil.copyfileobj(_Zeros(unpacked), out, 1 << 20)
    else:
        with tarfile.open(path, "w:gz", compresslevel=9) as tar:
            _add(tar, f"bin/{name}", script, 0o755)
            info = tarfile.TarInfo("share/zeros")
            info.size, info.mode = unpacked, 0o644
            tar.addfile(info, io.BufferedReader(_Zeros(unpacked)))
    return describe(path)


def many_entries_tarball(
    dest: Path, name: str, version: str, entries: int, fmt: str = "tar.gz"
) -> Artifact:
    """An archive of ``entries`` empty files beside ``bin/<name>`` (an inode bomb)."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-entries.{fmt}"
    script = program_source(name, version).encode()
    if fmt == "zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"bin/{name}", script)
            for i in range(entries):
                zf.writestr(f"junk/{i}", b"")
    else:
        with tarfile.open(path, "w:gz") as tar:
            _add(tar, f"bin/{name}", script, 0o755)
            for i in range(entries):
                _add(tar, f"junk/{i}", b"")
    return describe(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

    def __init__(self, root: Path, *, ignore_range: bool = False) -> None:
        self.root = root
        self.ignore_range = ignore_range
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, str | None]] = []
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
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
