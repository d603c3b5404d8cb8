"""What the llama-cpp and mlx-lm runtimes share: a Python-module server on 127.0.0.1.

A model workload is run as ``<agent's python> -m <runtime server> --model <path in the
version dir> --host 127.0.0.1 --port <args.port> ...``. The runtime must be importable in
the agent's own interpreter (``pip install 'fleetkeeper[llama]'`` / ``'fleetkeeper[mlx]'``);
when it is not, :meth:`ModelServerRuntime.command` raises a ``WorkloadError`` that says so
and how to fix it, once, instead of starting a process that would crash again and again.

Proof of what is served: both servers list the model by the path they were given
(``GET /v1/models``), and that path lies in ``<root>/<name>/versions/<version>/``, whose
marker file holds the SHA-256 verified at download. The health result carries both the
path and that digest (``details["modelPath"]``, ``details["sha256"]``); for a single-file
model the file itself is hashed too (cached by inode, size and mtime) so a file changed on
disk after verification is caught.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.errors import WorkloadError
from agent.layout import MARKER
from agent.procinfo import ProcInfo
from agent.runtimes.base import HealthResult, VersionProbe, WorkloadDoc
from agent.runtimes.openai_health import check_openai, served_from
from agent.selfinstall import agent_location

log = logging.getLogger(__name__)

IMPORT_PROBE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Availability:
    """Whether a runtime can start on this node, and if not, why (for people)."""

    ok: bool
    reason: str


# Per runtime: modules imported for real (their native libraries must load) and modules
# only looked up (importing them would cost a second: fastapi, transformers, ...).
RUNTIME_MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama-cpp": (
        ("llama_cpp",),
        (
            "llama_cpp.server",
            "fastapi",
            "uvicorn",
            "sse_starlette",
            "starlette_context",
            "pydantic_settings",
        ),
    ),
    "mlx-lm": (("mlx.core",), ("mlx_lm", "transformers")),
}

_PROBE = """
import importlib, importlib.util, json, sys
out = {}
for key, (imports, finds) in json.loads(sys.argv[1]).items():
    try:
        for m in imports:
            importlib.import_module(m)
        missing = [m for m in finds if importlib.util.find_spec(m) is None]
        out[key] = [not missing, "missing " + ", ".join(missing) if missing else "ok"]
    except Exception as exc:
        out[key] = [False, f"import {m}: {type(exc).__name__}: {exc}"]
print(json.dumps(out))
"""

_availability: dict[str, dict[str, Availability]] = {}
_availability_lock = threading.Lock()


def probe_runtimes(python: str = sys.executable) -> dict[str, Availability]:
    """Which model runtimes ``python`` can run, checked in a fresh interpreter.

    A subprocess, not ``importlib`` here: a runtime whose native library fails to load must
    not take the agent down, and the agent must not keep a model runtime loaded. About a
    quarter of a second; cached per interpreter (installing a runtime means restarting the
    agent).
    """
    with _availability_lock:
        if python in _availability:
            return _availability[python]
    spec = json.dumps(RUNTIME_MODULES)
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE, spec],
            capture_output=True,
            text=True,
            timeout=IMPORT_PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        found = json.loads(proc.stdout) if proc.returncode == 0 else {}
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        result = {
            key: Availability(bool(found[key][0]), str(found[key][1]))
            if key in found
            else Availability(False, f"{python}: {why}")
            for key in RUNTIME_MODULES
        }
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        result = {key: Availability(False, f"{python}: {exc}") for key in RUNTIME_MODULES}
    with _availability_lock:
        _availability[python] = result
    return result


def installed_runtimes(python: str = sys.executable) -> dict[str, bool]:
    """For the node facts (register): ``{"llama-cpp": bool, "mlx-lm": bool}``."""
    return {key: a.ok for key, a in probe_runtimes(python).items()}


SwapMode = Literal["overlap", "restart"]
HANDOFF_MODULE = "agent.runtimes.handoff_serve"
GIB = 1 << 30
# Two copies of the model live in memory while they overlap; leave room for the rest.
OVERLAP_MEMORY_SHARE = 0.8


def swap_mode(
    args: Mapping[str, Any], size: int | None, memory_gib: float | None, cuda: bool
) -> SwapMode:
    """``overlap`` (blue/green: the new server starts beside the old one on the shared port,
    zero downtime, twice the memory for a moment) or ``restart`` (stop, then start).

    ``args.swap`` decides when it is ``overlap`` or ``restart``; ``auto`` (the default)
    overlaps only when two copies of the artifact fit in 80% of the machine's memory and
    the model is not offloaded to a CUDA GPU, whose free memory the agent cannot see (pure).
    """
    asked = args.get("swap", "auto")
    if asked in ("overlap", "restart"):
        return "overlap" if asked == "overlap" else "restart"
    if cuda and args.get("gpuLayers", 0) not in (0, None):
        return "restart"
    if size is None or memory_gib is None:
        return "restart"
    return "overlap" if 2 * size <= OVERLAP_MEMORY_SHARE * memory_gib * GIB else "restart"


def disk_size(path: Path) -> int | None:
    """Bytes of a model file, or of every file under a model directory."""
    try:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    except OSError:
        return None


def machine_memory_gib() -> float | None:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / GIB
    except (ValueError, OSError):
        return None


def model_port(workload: WorkloadDoc) -> int:
    """``model.args.port`` as an int (the reconciler resolves label placeholders)."""
    args = (workload.get("model") or {}).get("args") or {}
    port = args.get("port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise WorkloadError(
            f"model {workload.get('name')!r}: model.args.port is {port!r}; it must be a TCP "
            "port number (check the node label its placeholder refers to)"
        )
    return port


def model_args(workload: WorkloadDoc) -> dict[str, Any]:
    return dict((workload.get("model") or {}).get("args") or {})


def health_timeout(workload: WorkloadDoc, default: float = 60.0) -> float:
    value = (workload.get("health") or {}).get("timeoutSeconds")
    return float(value) if isinstance(value, int | float) else default


def version_marker(path: Path) -> Path | None:
    """The ``versions/<version>`` directory that ``path`` lies in, if any (no I/O)."""
    for parent in (path, *path.parents):
        if parent.parent.name == "versions":
            return parent
    return None


def accepts_version(workload: WorkloadDoc, model_id: str) -> bool:
    """Whether a listed id is a path in ``<name>/versions/<version>`` of this workload."""
    name, version = str(workload.get("name")), str(workload.get("version"))
    path = Path(os.path.normpath(model_id))
    vdir = version_marker(path)
    return (
        vdir is not None
        and vdir.name == version
        and vdir.parent.parent.name == name
        and served_from(str(path), str(vdir))
    )


def recorded_sha256(version_dir: Path) -> str | None:
    """The SHA-256 the agent verified when it installed ``version_dir`` (its marker file)."""
    try:
        return (version_dir / MARKER).read_text("utf-8").split()[0]
    except (OSError, IndexError):
        return None


_hashes: dict[tuple[str, int, int, int], str] = {}
_hash_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached by (path, inode, size, mtime): health checks repeat."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hashes:
            return _hashes[key]
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _hash_lock:
        _hashes[key] = digest
    return digest


def loaded_model_identity(model_path: str, *, hash_file: bool) -> tuple[dict[str, Any], str]:
    """Report details for the model path a server listed, and a problem ("" when none).

    ``sha256`` is the digest verified at download (from the version's marker); with
    ``hash_file`` the file itself is hashed now and must still match it.
    """
    path = Path(os.path.realpath(model_path))
    details: dict[str, Any] = {"modelPath": str(path)}
    vdir = version_marker(path)
    recorded = recorded_sha256(vdir) if vdir is not None else None
    details["sha256"] = recorded
    if not hash_file or not path.is_file():
        return details, ""
    try:
        actual = file_sha256(path)
    except OSError as exc:
        return details, f"cannot read the loaded model file {path}: {exc}"
    details["fileSha256"] = actual
    if recorded is not None and actual != recorded:
        return details, (
            f"the loaded model file {path} has SHA-256 {actual}, but {recorded} was verified "
            "at download: it changed on disk"
        )
    return details, ""


class ModelServerRuntime:
    """Shared behaviour; subclasses say which module to run and how to pass the args."""

    name = "model"
    python = sys.executable  # the agent's interpreter, where the runtime was installed
    install_hint = ""
    single_file = True  # the model is one file (hash it at health time)

    def availability(self) -> Availability:
        return probe_runtimes(self.python)[self.name]

    def require_available(self, workload: WorkloadDoc) -> None:
        avail = self.availability()
        if not avail.ok:
            raise WorkloadError(
                f"model {workload.get('name')!r} needs runtime {self.name}, which is not "
                f"installed on this node ({avail.reason}); {self.install_hint}"
            )

    def server_argv(
        self, model_path: Path, port: int, args: dict[str, Any], *, handoff: bool
    ) -> list[str]:
        raise NotImplementedError

    def swap(self, workload: WorkloadDoc, model_path: Path) -> SwapMode:
        """How a new version replaces the running one on this node (see :func:`swap_mode`)."""
        size = (workload.get("artifact") or {}).get("size")
        if not isinstance(size, int):
            size = disk_size(model_path)
        return swap_mode(
            model_args(workload),
            size,
            machine_memory_gib(),
            shutil.which("nvidia-smi") is not None,
        )

    def can_handoff(self, argv: Sequence[str], running: ProcInfo | None) -> bool:
        """Start the server ``argv`` beside ``running`` (blue/green)? Only when both were
        built to share the port: a server bound without SO_REUSEPORT must be stopped first."""
        return running is not None and HANDOFF_MODULE in argv and HANDOFF_MODULE in running.cmdline

    def model_path(self, workload: WorkloadDoc, version_dir: Path) -> Path:
        raise NotImplementedError

    def server_env(self, state_dir: Path) -> dict[str, str]:
        return {"PYTHONUNBUFFERED": "1"}

    def command(
        self, workload: WorkloadDoc, version_dir: Path, state_dir: Path
    ) -> tuple[list[str], dict[str, str]]:
        self.require_available(workload)
        port = model_port(workload)
        path = self.model_path(workload, Path(os.path.realpath(version_dir)))
        handoff = self.swap(workload, path) == "overlap"
        argv = self.server_argv(path, port, model_args(workload), handoff=handoff)
        extra = model_args(workload).get("extra") or []
        argv += [str(a) for a in extra]
        env = self.server_env(state_dir)
        if handoff:
            # The handoff wrapper is the agent's own module; workloads inherit no PYTHONPATH.
            env["PYTHONPATH"] = str(agent_location().parent)
        return argv, env

    def check_health(self, workload: WorkloadDoc, timeout: float) -> HealthResult:
        try:
            port = model_port(workload)
        except WorkloadError as exc:
            return HealthResult(False, str(exc))
        result = check_openai(port, timeout, lambda i: accepts_version(workload, i))
        if not result.ok:
            return result
        identity, problem = loaded_model_identity(
            str(result.details["model"]), hash_file=self.single_file
        )
        details = {**result.details, **identity}
        if problem:
            return HealthResult(False, problem, details)
        return HealthResult(True, f"{result.message}; sha256 {identity['sha256']}", details)

    def probe_version(
        self, workload: WorkloadDoc, version_dir: Path, timeout: float
    ) -> VersionProbe:
        # The server's own /v1/models names the version directory it loaded (see
        # check_health); there is no separate program to ask.
        return VersionProbe(
            configured=False,
            ok=True,
            output="",
            message="model version is proven by the path the server lists in /v1/models",
        )
