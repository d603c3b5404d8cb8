"""What the operating system says about a process: alive, start time, executable, cwd, argv.

Linux reads ``/proc``; elsewhere (macOS) ``ps`` gives the start time and argv. The start
time (with the PID) identifies a process across agent restarts: PIDs are reused, the pair
is not.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from functools import cache

_LINUX = os.path.isdir("/proc/self")


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    start_time: float  # seconds since the epoch
    start_id: str  # stable identity of this process instance (start ticks on Linux)
    exe: str | None
    cwd: str | None
    cmdline: tuple[str, ...]


@cache
def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def read(pid: int) -> ProcInfo | None:
    """Facts about a live process (None when it is gone or a zombie)."""
    if pid <= 0:
        return None
    reader = _read_linux if _LINUX else _read_ps
    return reader(pid)


def _read_linux(pid: int) -> ProcInfo | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The comm field may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    ticks = int(fields[19])
    hz = os.sysconf("SC_CLK_TCK")
    cmdline = tuple(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p)
    return ProcInfo(
        pid=pid,
        start_time=_boot_time() + ticks / hz,
        start_id=str(ticks),
        exe=_readlink(f"/proc/{pid}/exe"),
        cwd=_readlink(f"/proc/{pid}/cwd"),
        cmdline=cmdline,
    )


def _read_ps(pid: int) -> ProcInfo | None:
    try:
        out = subprocess.run(
            ["ps", "-p", str(pid), "-o", "stat=", "-o", "lstart=", "-o", "command="],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "LC_ALL": "C"},
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if not out or out.startswith("Z"):
        return None
    parts = out.split()
    lstart = " ".join(parts[1:6])
    try:
        started = time.mktime(time.strptime(lstart, "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        started = 0.0
    cmd = tuple(parts[6:])
    return ProcInfo(pid, started, lstart, cmd[0] if cmd else None, None, cmd)


def alive(pid: int, start_id: str | None = None) -> bool:
    """True when ``pid`` runs and (when given) is the same instance as ``start_id``."""
    info = read(pid)
    return info is not None and (start_id is None or info.start_id == start_id)


def evidence_paths(info: ProcInfo) -> list[tuple[str, str]]:
    """Paths that show what a process runs, strongest first: exe, argv[0..1], cwd."""
    out: list[tuple[str, str]] = []
    if info.exe:
        out.append(("exe", info.exe))
    cwd = info.cwd or "/"
    for i, arg in enumerate(info.cmdline[:2]):
        if "/" in arg:
            out.append((f"argv[{i}]", arg if os.path.isabs(arg) else os.path.join(cwd, arg)))
    if info.cwd:
        out.append(("cwd", info.cwd))
    return out


def kill_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group ``pid`` leads (our workloads are session leaders),
    falling back to the process alone when there is no such group."""
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def session_leaders() -> list[int]:
    """PIDs of live processes that lead their own session (workloads do; Linux only)."""
    if not _LINUX:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and int(fields[3]) == int(entry):
            out.append(int(entry))
    return out


def environ_has(pid: int, key: str, value: str) -> bool:
    """True when process ``pid`` was started with ``key=value`` in its environment (Linux;
    readable for our own processes only)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            entries = fh.read().split(b"\0")
    except OSError:
        return False
    return f"{key}={value}".encode() in entries
