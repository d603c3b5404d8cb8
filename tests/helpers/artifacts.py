"""Artifacts for agent tests, the demo and benchmarks (served by ``artifact_server``).

Reusable by every engineer::

    from tests.helpers.artifact_server import ArtifactServer
    from tests.helpers.artifacts import build_program, evil_tarball

    art = build_program(tmp / "dist", "hello", "1.0.0")        # .tar.gz with bin/hello
    with ArtifactServer(tmp / "dist") as srv:
        url = srv.url(art.path.name)                              # http://127.0.0.1:PORT/...
        srv.truncate_next(art.path.name, at=100)                  # next GET drops after 100 B

The program is a real Python script (``#!<sys.executable>``): ``bin/<name> --version``
prints ``<name> <version>``; ``bin/<name> --port N`` (or env ``PORT``) serves ``/healthz``
(200, body ``<name> <version>``) and ``/version`` on 127.0.0.1. Behaviour switches baked in
at build time: ``exit_at_start`` (exits 3 at once), ``unhealthy`` (``/healthz`` answers 500),
``crash_after`` (exits 4 after N seconds), ``probe_version`` (what ``--version`` claims).
For drain tests: ``GET /slow?s=3`` answers after 3 s; ``POST /drain`` (any POST) answers 200
when no slow request is in flight, else 202; with ``--lock PATH`` the program holds that
update lock file while a slow request is in flight; ``--reuseport`` binds with SO_REUSEPORT
so two versions can serve one port at once (the overlap swap of model servers).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.artifact_server import ArtifactServer, free_port

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
LOCK = args[args.index("--lock") + 1] if "--lock" in args else None
busy, busy_lock = [0], threading.Lock()
def working(delta):
    with busy_lock:
        busy[0] += delta
        if LOCK and busy[0] == 1 and delta > 0:
            open(LOCK, "w").close()
        if LOCK and busy[0] == 0:
            os.unlink(LOCK)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 500 if (UNHEALTHY and self.path == "/healthz") else 200
        slow = self.path.startswith("/slow")
        if slow:
            working(1)
        try:
            if slow:
                time.sleep(float(self.path.partition("=")[2] or 3))
            body = f"{{NAME}} {{VERSION}}\\n".encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        finally:
            if slow:
                working(-1)  # idle only once the answer is sent
    def do_POST(self):
        with busy_lock:
            idle = busy[0] == 0
        self.send_response(200 if idle else 202)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
# --reuseport: share the port with the next version (a blue/green handoff, as model servers)
http.server.ThreadingHTTPServer.allow_reuse_port = "--reuseport" in args
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
    """A ``.tar.gz`` of the agent itself (this checkout's ``agent``, ``schema`` and
    ``fleetkeeper_common`` packages, everything the agent imports, with ``__version__`` set
    to ``version``) started by ``bin/fleetkeeper-agent``.
    ``broken``: the daemon dies right after start (its report thread raises), for
    self-update rollback tests."""
    repo = Path(__file__).resolve().parents[2]
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"fleetkeeper-agent-{version}.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for package in ("agent", "schema", "fleetkeeper_common"):
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


# Kept importable from here: tests written before the server had its own module use it so.
__all__ = [
    "Artifact",
    "ArtifactServer",
    "build_agent",
    "build_program",
    "describe",
    "evil_tarball",
    "free_port",
    "program_source",
]


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


def program_release(
    agent: str, version: str, art: Artifact, url: str, *, roles: Sequence[str] = ("inference",)
) -> dict[str, Any]:
    """The release of a program ``bin/<agent> --port N`` (such as ``build_program``'s)
    served at ``url``: a port from the node label, health on it, batches of one, no soak."""
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": agent,
        "version": version,
        "artifacts": [art.artifact_doc(url, "linux/amd64")],
        "run": {"command": [f"bin/{agent}", "--port", "${node.labels.port}"]},
        "health": {"http": "http://127.0.0.1:${node.labels.port}/healthz", "timeoutSeconds": 5},
        "versionProbe": [f"bin/{agent}", "--version"],
        "targets": {"roles": list(roles)},
        "rollout": {"batchSize": 1, "soakSeconds": 0, "timeoutSeconds": 60, "onFailure": "halt"},
    }


def hello_release(version: str, art: Artifact, url: str) -> dict[str, Any]:
    """The ``hello`` release of ``art`` (a program built by ``build_program``)."""
    return program_release("hello", version, art, url)
