"""Workloads as child processes of the agent (the default supervisor).

Each workload is its own session and process group (``start_new_session``), so stopping it
(SIGTERM to the group, SIGKILL after a grace period) also ends what it started, and a
killed agent leaves it running. Its PID and start identity are recorded in the state
directory: a restarted agent re-adopts a still-running workload instead of orphaning or
duplicating it. Crashes are restarted with exponential backoff; output goes to
``<stateDir>/logs/<name>.log``, rotated by size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent import isolation, procinfo
from agent.errors import SupervisorError, WorkloadError
from agent.procinfo import ProcInfo
from agent.secrets import read_env_file
from agent.state import StateDir
from agent.supervise.records import ProcessRecords
from agent.supervise.supervisor import LaunchSpec

log = logging.getLogger(__name__)

STABLE_SECONDS = 10.0
WORKLOAD_ENV = isolation.WORKLOAD_ENV


@dataclass
class _Managed:
    spec: LaunchSpec
    pid: int
    start_id: str
    popen: subprocess.Popen[bytes] | None
    started: float
    auto_restart: bool = True
    failures: int = 0
    restart_at: float | None = None
    note: str | None = None


def backoff_seconds(failures: int, base: float, cap: float) -> float:
    """Delay before restart number ``failures`` (1, 2, ...): base * 2^(n-1), capped (pure)."""
    return float(min(cap, base * 2 ** max(failures - 1, 0)))


def reap(pid: int) -> None:
    """Collect an exited adopted process that is still our child (after the agent exec'ed
    itself, its workloads remain its children): no zombies."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def rotate(path: Path, keep: int) -> None:
    """Shift ``path`` to ``path.1`` (… ``path.<keep>``); copy-then-truncate so a writer
    holding the file open (O_APPEND) keeps writing to the live file."""
    if not path.exists():
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as fh:
        fh.truncate(0)


def terminate(
    pid: int, popen: subprocess.Popen[bytes] | None, start_id: str | None, *, grace: float
) -> None:
    """Stop the process group of ``pid``: SIGTERM, SIGKILL after ``grace`` seconds; nothing
    of the group survives. A recorded process (no ``popen``) that is no longer the same
    instance (``start_id``) is left alone: its PID may belong to someone else now."""
    if popen is None and start_id is not None and not procinfo.alive(pid, start_id):
        return
    procinfo.kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if popen is not None:
            if popen.poll() is not None:
                break
        elif procinfo.read(pid) is None:
            break
        time.sleep(0.02)
    else:
        log.warning("pid %d ignored SIGTERM for %.1fs; sending SIGKILL", pid, grace)
    # Whatever the leader did, nothing of the group may survive it.
    procinfo.kill_group(pid, signal.SIGKILL)
    if popen is None:
        reap(pid)
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=2)


def spawn(spec: LaunchSpec, logfile: Path) -> subprocess.Popen[bytes]:
    """Start ``spec`` in its own session, its output appended to ``logfile`` after a start
    line (``last_error_line`` reads from the last one)."""
    # Nothing of the agent's environment (it holds the join token): a clean base, run.env
    # and the marker that lets a later agent recognise an unrecorded process.
    try:
        user = isolation.lookup_user(spec.user) if spec.user else None
    except WorkloadError as exc:
        raise SupervisorError(f"cannot start {spec.name}: {exc}") from exc
    home = user.home if user else isolation.own_home()
    extra = {**spec.env, **(read_env_file(spec.env_file) if spec.env_file else {})}
    env = isolation.workload_env(spec.name, extra, home=home, agent_env=os.environ)
    with open(logfile, "ab") as out:
        out.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start {list(spec.argv)}\n".encode())
        out.flush()
        try:
            return subprocess.Popen(
                list(spec.argv),
                cwd=spec.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                **isolation.popen_user_kwargs(user),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            as_user = f" as user {user.name}" if user else ""
            raise SupervisorError(
                f"cannot start {spec.name}{as_user}: {list(spec.argv)} in {spec.cwd}: {exc}"
            ) from exc


def stop_strays(
    name: str, belongs: Callable[[ProcInfo], bool], keep: int | None, *, grace: float
) -> None:
    """Stop unrecorded processes of ``name``: an agent killed between starting a process
    and recording it left one behind; adopting one and starting another would run the
    workload twice."""
    own = os.getpid()
    for pid in procinfo.session_leaders():
        if pid in (keep, own):
            continue
        if not procinfo.environ_has(pid, WORKLOAD_ENV, name):
            continue  # not started by an agent as this workload (e.g. someone's shell)
        info = procinfo.read(pid)
        if info is not None and belongs(info):
            log.warning("stopping unrecorded %s pid %d left by an earlier agent", name, pid)
            terminate(pid, None, info.start_id, grace=grace)


class ChildSupervisor:
    def __init__(
        self,
        state: StateDir,
        *,
        grace_seconds: float = 5.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        log_max_bytes: int = 10 << 20,
        log_keep: int = 3,
    ) -> None:
        self.state = state
        self.grace = grace_seconds
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.log_max_bytes, self.log_keep = log_max_bytes, log_keep
        self._procs: dict[str, _Managed] = {}
        self._retiring: dict[str, _Managed] = {}  # old processes of a blue/green handoff
        self._lock = threading.RLock()
        self.records = ProcessRecords(state)

    def _write_record(self, m: _Managed) -> None:
        self.records.write(m.spec, m.pid, m.start_id, m.started)

    def recorded(self, name: str) -> ProcInfo | None:
        """The recorded process of ``name`` when it still runs (the same instance)."""
        return self.records.alive(name)

    # -- Supervisor protocol --------------------------------------------------------------
    def adopt(self, name: str, belongs: Callable[[ProcInfo], bool]) -> ProcInfo | None:
        with self._lock:
            # An agent killed in the middle of a handoff left the old process sharing the
            # port with the new one: it must not keep serving the old version.
            self.retire(name)
            if name in self._procs:
                return self.running(name)
            rec = self.records.read(name)
            info = self.recorded(name)
            self._stop_strays(name, belongs, keep=info.pid if info else None)
            if info is None or rec is None:
                self.records.drop(name)
                return None
            if not belongs(info):
                log.info(
                    "stopping %s pid %d left by an earlier agent (not ours now)", name, info.pid
                )
                self._terminate(info.pid, None)
                self.records.drop(name)
                return None
            spec = self.records.spec_of(name, rec)
            self._procs[name] = _Managed(
                spec, info.pid, info.start_id, None, float(rec.get("startedAt") or info.start_time)
            )
            log.info("adopted %s pid %d", name, info.pid)
            return info

    def watch(self, name: str) -> ProcInfo | None:
        """Track the recorded process of ``name`` without stopping or starting anything
        (read-only views such as ``fleetkeeper-agent status``)."""
        with self._lock:
            rec = self.records.read(name)
            info = self.recorded(name)
            if info is None or rec is None:
                return None
            spec = self.records.spec_of(name, rec, with_env=False)
            m = _Managed(spec, info.pid, info.start_id, None, info.start_time)
            m.auto_restart = False
            self._procs[name] = m
            return info

    def _stop_strays(
        self, name: str, belongs: Callable[[ProcInfo], bool], keep: int | None
    ) -> None:
        stop_strays(name, belongs, keep, grace=self.grace)

    def start(self, spec: LaunchSpec) -> ProcInfo:
        with self._lock:
            current = self._procs.get(spec.name)
            if current is not None and procinfo.alive(current.pid, current.start_id):
                raise SupervisorError(f"{spec.name} already runs as pid {current.pid}")
            m = self._spawn(spec)
            old = self._procs.get(spec.name)
            if old is not None:
                m.auto_restart = old.auto_restart
                m.failures = old.failures
            self._procs[spec.name] = m
            info = procinfo.read(m.pid)
            if info is None:
                # It died at once; report what exists (the caller's proof will fail on it).
                return ProcInfo(m.pid, m.started, m.start_id, None, None, spec.argv)
            return info

    def _spawn(self, spec: LaunchSpec) -> _Managed:
        logfile = self.state.log_file(spec.name)
        logfile.parent.mkdir(parents=True, exist_ok=True)
        if logfile.exists() and logfile.stat().st_size > self.log_max_bytes:
            rotate(logfile, self.log_keep)
        popen = spawn(spec, logfile)
        info = procinfo.read(popen.pid)
        start_id = info.start_id if info else "exited"
        m = _Managed(spec, popen.pid, start_id, popen, time.time())
        self._write_record(m)
        log.info("started %s pid %d: %s", spec.name, popen.pid, " ".join(spec.argv))
        return m

    def stop(self, name: str) -> None:
        with self._lock:
            self.retire(name)
            m = self._procs.pop(name, None)
            if m is not None:
                self._terminate(m.pid, m.popen, m.start_id)
            else:
                info = self.recorded(name)
                if info is not None:
                    self._terminate(info.pid, None)
            self.records.drop(name)

    def _terminate(
        self, pid: int, popen: subprocess.Popen[bytes] | None, start_id: str | None = None
    ) -> None:
        terminate(pid, popen, start_id, grace=self.grace)

    def restart(self, spec: LaunchSpec) -> ProcInfo:
        with self._lock:
            before = self.running(spec.name)
            self.stop(spec.name)
            info = self.start(spec)
            if before is not None and (info.pid, info.start_id) == (before.pid, before.start_id):
                raise SupervisorError(f"restart of {spec.name} left the old pid {before.pid}")
            return info

    # -- blue/green handoff (HandoffSupervisor) --------------------------------------------
    def handoff(self, spec: LaunchSpec) -> ProcInfo:
        """Start ``spec`` while the running process keeps running (they share the port);
        :meth:`retire` stops the old one. Nothing running: a plain restart."""
        with self._lock:
            old = self._procs.get(spec.name)
            if old is None or self.running(spec.name) is None:
                return self.restart(spec)
            self.retire(spec.name)  # at most one old process at a time
            self.records.write_retiring(spec.name, old.pid, old.start_id)
            del self._procs[spec.name]
            self._retiring[spec.name] = old
            try:
                return self.start(spec)
            except BaseException:
                # The new one did not start: the old one stays the workload's process.
                self._procs[spec.name] = self._retiring.pop(spec.name)
                self._write_record(old)
                self.records.drop_retiring(spec.name)
                raise

    def retire(self, name: str, grace: float | None = None) -> None:
        with self._lock:
            m = self._retiring.pop(name, None)
            # A drain may give the old process longer than stopGraceSeconds to finish.
            wait = self.grace if grace is None else max(grace, self.grace)
            if m is not None:
                log.info("stopping %s pid %d (replaced by a handoff)", name, m.pid)
                terminate(m.pid, m.popen, m.start_id, grace=wait)
            else:
                left = self.records.retiring(name)
                if left is not None:
                    terminate(left[0], None, left[1], grace=wait)
            self.records.drop_retiring(name)

    def retiring(self, name: str) -> ProcInfo | None:
        """The old process a handoff left running beside the new one (None: none)."""
        with self._lock:
            m = self._retiring.get(name)
            if m is None or (m.popen is not None and m.popen.poll() is not None):
                return None
            info = procinfo.read(m.pid)
            return info if info is not None and info.start_id == m.start_id else None

    def running(self, name: str) -> ProcInfo | None:
        with self._lock:
            m = self._procs.get(name)
            if m is None:
                return None
            if m.popen is not None and m.popen.poll() is not None:
                return None
            info = procinfo.read(m.pid)
            if info is None or info.start_id != m.start_id:
                return None
            return info

    def managed(self) -> list[str]:
        with self._lock:
            return sorted(self._procs)

    def set_auto_restart(self, name: str, on: bool) -> None:
        with self._lock:
            m = self._procs.get(name)
            if m is not None:
                m.auto_restart = on
                if on:
                    m.restart_at = None

    def crash_count(self, name: str) -> int:
        """Exits in a row of the workload, each within STABLE_SECONDS of its start (0 once it
        has run steadily): a crash loop when it keeps growing."""
        with self._lock:
            m = self._procs.get(name)
            return m.failures if m else 0

    def crash_note(self, name: str) -> str | None:
        with self._lock:
            m = self._procs.get(name)
            return m.note if m else None

    def exit_code(self, name: str) -> int | None:
        with self._lock:
            m = self._procs.get(name)
            if m is None or m.popen is None:
                return None
            return m.popen.poll()

    def tick(self) -> None:
        with self._lock:
            now = time.monotonic()
            for name, m in list(self._procs.items()):
                self._maybe_rotate(name)
                if m.popen is None:
                    reap(m.pid)
                if self.running(name) is not None:
                    if m.note and time.time() - m.started > STABLE_SECONDS:
                        m.failures, m.note = 0, None
                    continue
                if not m.auto_restart:
                    continue
                if m.restart_at is None:
                    code = m.popen.poll() if m.popen is not None else None
                    ran = time.time() - m.started
                    m.failures = 1 if ran > STABLE_SECONDS else m.failures + 1
                    delay = backoff_seconds(m.failures, self.backoff_base, self.backoff_cap)
                    m.restart_at = now + delay
                    m.note = (
                        f"exited (code {code}) after {ran:.1f}s; restart {m.failures} "
                        f"in {delay:.1f}s"
                    )
                    log.warning("%s pid %d %s", name, m.pid, m.note)
                    continue
                if now >= m.restart_at:
                    try:
                        fresh = self._spawn(m.spec)
                    except SupervisorError as exc:
                        m.failures += 1
                        m.restart_at = now + backoff_seconds(
                            m.failures, self.backoff_base, self.backoff_cap
                        )
                        m.note = str(exc)
                        continue
                    fresh.failures, fresh.note = m.failures, m.note
                    self._procs[name] = fresh

    def _maybe_rotate(self, name: str) -> None:
        logfile = self.state.log_file(name)
        with contextlib.suppress(OSError):
            if logfile.stat().st_size > self.log_max_bytes:
                rotate(logfile, self.log_keep)
