"""The agent daemon: the thin shell wiring poll → converge → report, each in its own thread.

* poller (``agent.poll``): long-polls the desired state (ETag); a new document is stored in
  the state directory first, then handed to the converger.
* converger: converges every workload of the latest document; also serves rollback
  requests written by ``fleetkeeper-agent rollback`` and re-checks (resyncs) periodically.
* reporter: posts a status report at least every ``heartbeatSeconds`` and soon after any
  phase change; a long-poll in flight never delays it.
* monitor: lets the supervisor notice crashes and restart them with backoff.

What runs is built in ``agent.wiring``. When the reconciler is unreachable nothing changes
locally: workloads keep running from the last good document (read back from the state
directory after a restart).
"""

from __future__ import annotations

import fcntl
import logging
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

import schema
from agent import __version__, facts, selfupdate
from agent.backoff import backoff_delay
from agent.board import Board
from agent.client import ServerClient
from agent.config import AgentConfig
from agent.converge import CRASH_LOOP_EXITS
from agent.errors import AgentError, AlreadyRunning
from agent.facts import platform_of
from agent.identity import ensure_identity
from agent.poll import Checks, Latest, poll_loop
from agent.report import build_report, decide_phase, desired_entry, workload_entry
from agent.selfinstall import agent_location, managed_workload
from agent.state import StateDir, read_json, write_json
from agent.trust import expired
from agent.wiring import make_converger, make_supervisor
from agent.workload import Desired

log = logging.getLogger(__name__)

MONITOR_SECONDS = 0.1
REQUEST_POLL_SECONDS = 0.1
STOP_JOIN_SECONDS = 0.3


class Daemon:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.state = StateDir(cfg.state_dir)
        self.state.ensure()
        self.identity = ensure_identity(self.state)  # first start: this node's age key
        cfg.install_root.mkdir(parents=True, exist_ok=True)
        self.board = Board()
        self.sup = make_supervisor(cfg, self.state)
        self.conv = make_converger(cfg, self.state, self.sup, self.board, self._superseded)
        self.stop = threading.Event()
        self._signalled = 0
        self.latest = Latest(*self.state.read_desired())
        self.acted_generation = 0
        self._expiry_logged = False
        self.retry_at: float | None = None  # wall time a workload's notBefore passes
        self.converging_generation: int | None = None
        self._lock_fd: int | None = None
        self._woken_for: dict[str, int] = {}  # crash count a converge pass was woken for

    # -- lifecycle ------------------------------------------------------------------------
    def acquire(self) -> None:
        fd = os.open(self.state.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise AlreadyRunning(
                f"another agent already runs with stateDir {self.state.root}"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def client(self) -> ServerClient:
        return ServerClient(
            self.cfg.servers,
            self.cfg.node,
            self.state,
            bootstrap_token=self.cfg.bootstrap_token,
            facts=lambda: facts.detect(self.cfg.node, self.cfg.roles, self.cfg.labels, __version__),
        )

    def run(self) -> int:
        self.acquire()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "agent %s for node %s: servers %s, installRoot %s, stateDir %s",
            __version__,
            self.cfg.node,
            ", ".join(self.cfg.servers),
            self.cfg.install_root,
            self.cfg.state_dir,
        )
        managed = managed_workload(agent_location(), self.cfg.install_root)
        log.info(
            "agent code at %s: %s",
            agent_location(),
            f"managed by installRoot as workload {managed}"
            if managed
            else "not under installRoot (installed by hand or by a package)",
        )
        started = selfupdate.on_start(self.cfg.install_root, self.state)
        if started and self.conv.me.name:
            log.info("%s", started[1])
            self.board.set(self.conv.me.name, phase=started[0], message=started[1])
        # Resume supervising from the last good document before talking to anyone.
        self.conv.adopt_all(self.latest.document)
        if self.latest.document is not None:
            self.latest.arrived.set()
        threads = [
            threading.Thread(target=self._guard(self._poll_loop), name="poll", daemon=True),
            threading.Thread(target=self._guard(self._converge_loop), name="converge", daemon=True),
            threading.Thread(target=self._guard(self._report_loop), name="report", daemon=True),
            threading.Thread(target=self._guard(self._monitor_loop), name="monitor", daemon=True),
        ]
        for t in threads:
            t.start()
        while not self.stop.is_set():
            if self._signalled:
                log.info("received signal %d", self._signalled)
                self.stop.set()
                break
            self.stop.wait(0.1)
        log.info("agent stopping; workloads keep running and are re-adopted at the next start")
        # Do not wait for a long-poll or a download: every step is safe to cut short.
        deadline = time.monotonic() + STOP_JOIN_SECONDS
        for t in threads:
            t.join(timeout=max(deadline - time.monotonic(), 0))
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only a flag: the handler runs in the main thread between bytecodes, and taking a
        # lock here (Event.set, logging) deadlocks when the main thread holds that lock.
        self._signalled = signum

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except Exception:
                log.exception(
                    "thread %s crashed; stopping the agent", threading.current_thread().name
                )
                self.stop.set()

        return run

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(seconds)

    # -- poll -----------------------------------------------------------------------------
    def _poll_loop(self) -> None:
        client = self.client()
        try:
            poll_loop(
                client,
                self.latest,
                self.state,
                checks=Checks(
                    self.cfg.node,
                    self.cfg.trusted_keys,
                    self.cfg.policy,
                    approvers=self.cfg.approvers,
                    labels=self.cfg.labels,
                    platform=platform_of(platform.system(), platform.machine()),
                    gnupg_home=self.state.root / "approvers-gnupg",
                ),
                wait_seconds=self.cfg.poll_wait_seconds,
                stop=self.stop,
                backoff=self._backoff,
            )
        finally:
            client.close()

    def _backoff(self, failures: int) -> float:
        return backoff_delay(
            failures - 1, base=0.5, cap=self.cfg.max_backoff_seconds, draw=random.random()
        )

    # -- converge -------------------------------------------------------------------------
    def _converge_loop(self) -> None:
        last_pass = 0.0
        while not self.stop.is_set():
            self._serve_requests()
            due = time.monotonic() - last_pass >= self.cfg.resync_seconds
            due |= self.retry_at is not None and time.time() >= self.retry_at
            if not self.latest.arrived.wait(REQUEST_POLL_SECONDS) and not due:
                continue
            self.latest.arrived.clear()
            doc = self.latest.document
            last_pass = time.monotonic()
            if doc is None:
                continue
            if expired(doc, time.time()):
                # freeze defence: what runs keeps running, but an expired document starts,
                # installs or rolls back nothing (the report says DesiredExpired)
                if not self._expiry_logged:
                    log.warning("desired state expired at %s: not acting on it", doc["expiresAt"])
                    self._expiry_logged = True
                continue
            self._expiry_logged = False
            self._converge(doc)

    def _superseded(self) -> bool:
        """A newer desired document arrived while one is being converged (downloads stop)."""
        latest, converging = self.latest.document, self.converging_generation
        if latest is None or converging is None:
            return False
        return int(latest.get("generation", 0)) != converging

    def _converge(self, doc: Mapping[str, Any]) -> None:
        self.converging_generation = int(doc.get("generation", 0))
        outcomes = self.conv.converge(doc)
        for outcome in outcomes:
            if outcome.exec_argv:
                self._exec(list(outcome.exec_argv))
        self.retry_at = min((o.retry_at for o in outcomes if o.retry_at is not None), default=None)
        self.acted_generation = int(doc.get("generation", 0))
        self.board.changed.set()

    def _serve_requests(self) -> None:
        rdir = self.state.requests_dir
        if not rdir.is_dir():
            return
        for req in sorted(rdir.glob("*.request.json")):
            body = read_json(req)
            req.unlink(missing_ok=True)
            if not isinstance(body, dict) or body.get("action") != "rollback":
                continue
            name = str(body.get("name"))
            doc = self.latest.document
            try:
                message = self.conv.rollback(name, doc)
                result = {"ok": True, "message": message}
            except AgentError as exc:
                result = {"ok": False, "message": str(exc)}
            write_json(req.with_name(req.name.replace(".request.", ".result.")), result)
            self.board.changed.set()

    # -- report ---------------------------------------------------------------------------
    def build_report(self) -> dict[str, Any]:
        desired = Desired.parse(self.latest.document)
        entries = []
        for entry in desired.entries:
            observed = self.conv.observe(entry)
            note = self.board.get(observed.name)
            phase = decide_phase(note.phase, observed)
            # the converge step's own words: why it failed, waits, retries a download, or
            # what a drain came to
            said = ("Failed", "RolledBack", "Pending", "Downloading", "Healthy")
            message = note.message if note.phase in said else None
            entries.append(workload_entry(observed, phase, message))
        generation = self.acted_generation or desired.generation
        doc = self.latest.document
        trust = self.latest.trust
        judged = desired_entry(
            doc,
            expired=expired(doc, time.time()),
            refused=self.latest.refused,
            trust=trust.mode if trust else None,
        )
        return build_report(self.cfg.node, generation, __version__, entries, judged)

    def _report_loop(self) -> None:
        client = self.client()
        failures = 0
        try:
            while not self.stop.is_set():
                report = self.build_report()
                problems = schema.errors("status-report", report)
                if problems:
                    log.error("status report is invalid (a bug): %s", "; ".join(problems))
                write_json(self.state.status_file, {"at": time.time(), "report": report})
                try:
                    client.report(report)
                    failures = 0
                    wait = self.cfg.heartbeat_seconds
                except AgentError as exc:
                    failures += 1
                    wait = min(self._backoff(failures), self.cfg.heartbeat_seconds)
                    log.warning("status report failed (%s); retrying in %.1fs", exc, wait)
                self.board.changed.clear()
                deadline = time.monotonic() + wait
                while not self.stop.is_set() and time.monotonic() < deadline:
                    if self.board.changed.wait(min(0.2, max(deadline - time.monotonic(), 0))):
                        # Let a burst of phase changes settle into one report.
                        self._sleep(0.05)
                        break
        finally:
            client.close()

    def _exec(self, argv: list[str]) -> None:
        """Replace this process with the new agent version (same PID; workloads keep running
        in their own sessions and are adopted from their records)."""
        log.info("exec %s", " ".join(argv))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the new image takes the lock itself
        os.execv(argv[0], argv)

    # -- monitor --------------------------------------------------------------------------
    def _wake_on_crash_loop(self) -> None:
        """A workload crash-looping: converge now (it rolls a crash-looping new version
        back) instead of at the next resync. Once per count, not at every tick."""
        counts = getattr(self.sup, "crash_count", None)
        managed = getattr(self.sup, "managed", None)
        if not callable(counts) or not callable(managed):
            return
        for name in managed():
            n = int(counts(name))
            layout = self.conv.installed.layout(name)
            # nothing to roll back to: leave it to the supervisor's backoff
            can_roll_back = layout.previous_version() not in (None, layout.current_version())
            if n >= CRASH_LOOP_EXITS and can_roll_back and self._woken_for.get(name) != n:
                self._woken_for[name] = n
                self.latest.arrived.set()
            elif n < CRASH_LOOP_EXITS:
                self._woken_for.pop(name, None)

    def _monitor_loop(self) -> None:
        started = time.monotonic()
        confirmed = False
        while not self.stop.is_set():
            self.sup.tick()
            self._wake_on_crash_loop()
            if not confirmed and time.monotonic() - started >= self.cfg.self_confirm_seconds:
                confirmed = True
                note = selfupdate.confirm(self.state, self.cfg.install_root)
                if note and self.conv.me.name:
                    log.info("%s", note)
                    self.board.set(self.conv.me.name, phase=None, message=None)
            self._sleep(MONITOR_SECONDS)
