"""Restart a workload on one version and prove that this version really runs.

Proof (``agent.prove`` judges, this module gathers the evidence): a new PID whose program
resolves into ``versions/<target>``, a ``versionProbe`` that names the target, and a health
check that passes within ``health.timeoutSeconds``. Runtimes whose servers share their port
(model servers) are handed over blue/green: the new process starts beside the old one,
which serves until the proof is done.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from agent import isolation
from agent.drain import Drained
from agent.drain import drain as drain_old
from agent.errors import WorkloadError
from agent.installed import Installed
from agent.procinfo import ProcInfo
from agent.prove import Proof, judge_process, judge_version_probe
from agent.runtimes import Runtime, WorkloadDoc
from agent.supervise.supervisor import HandoffSupervisor, LaunchSpec, Supervisor
from agent.workload import DEFAULT_HEALTH_TIMEOUT, Drain

POLL = 0.05
MIN_UP_WITHOUT_HEALTH = 1.0

_ERROR_LINE = re.compile(r"error|exception|failed|fatal|traceback", re.IGNORECASE)


def last_error_line(logfile: Path, limit: int = 300) -> str:
    """The last non-empty line the process wrote since its last start (its own error,
    e.g. llama.cpp's "Failed to load model from file"), for the report."""
    try:
        with open(logfile, "rb") as fh:
            fh.seek(max(fh.seek(0, os.SEEK_END) - 16384, 0))
            tail = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = tail.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("--- ") and " start [" in ln]
    said = [ln.strip() for ln in lines[starts[-1] + 1 if starts else 0 :] if ln.strip()]
    # During a blue/green handoff the old process writes to the same log: prefer the last
    # line that reads like an error over its access log.
    errors = [ln for ln in said if _ERROR_LINE.search(ln)]
    chosen = errors or said
    return chosen[-1][:limit] if chosen else ""


class Restarter:
    def __init__(
        self,
        installed: Installed,
        supervisor: Supervisor,
        exit_code: Callable[[str], int | None],
    ) -> None:
        self.installed = installed
        self.sup = supervisor
        self.exit_code = exit_code

    def restart_and_prove(
        self,
        doc: WorkloadDoc,
        version: str,
        old: ProcInfo | None,
        timings: dict[str, float],
        drain: Drain | None = None,
        notes: list[str] | None = None,
    ) -> Proof:
        """Start ``version`` as ``doc`` describes it in place of ``old``, and prove it.

        ``drain``: ask ``old`` to finish its work first (``agent.drain``): before it is
        stopped, or for a handoff before it is retired, after the new one is proven. What
        the drain came to is appended to ``notes`` when it timed out.
        """
        # The process and its versionProbe run as run.user, else the agent's workloadUser.
        doc = isolation.with_user(doc, self.installed.workload_user)
        t = time.monotonic()
        sup = self.sup
        handoff = False
        try:
            spec, runtime, vdir = self.installed.spec(doc, version)
            handoff = self._can_handoff(runtime, spec)
            if isinstance(sup, HandoffSupervisor) and handoff:
                sup.handoff(spec)
            else:
                drained = self._drain(drain, old, lambda: self._same(spec.name, old), timings)
                try:
                    t = time.monotonic()
                    sup.restart(spec)
                finally:
                    self._noted(drained, notes)
        except WorkloadError as exc:
            timings["restart"] = time.monotonic() - t
            return Proof(False, str(exc))
        timings["restart"] = time.monotonic() - t
        t = time.monotonic()
        proof = self.prove(doc, runtime, version, vdir, old)
        timings["prove"] = time.monotonic() - t
        if isinstance(sup, HandoffSupervisor) and handoff:
            # Proven or not, the old process goes now (a failed proof rolls back to a fresh
            # process of the old version). Drained first: the new one already serves on the
            # shared port, and SIGTERM gets the drain's time too, so a server that finishes
            # in-flight requests on SIGTERM (uvicorn) completes them.
            began = time.monotonic()
            drained = self._drain(drain, old, lambda: sup.retiring(spec.name) is not None, timings)
            t = time.monotonic()
            left = None if drain is None else max(drain.timeout - (t - began), 0.0)
            try:
                sup.retire(spec.name, grace=left)
            finally:
                self._noted(drained, notes)
            timings["retire"] = time.monotonic() - t
        return proof

    def _same(self, name: str, old: ProcInfo | None) -> bool:
        """Does ``old`` still run as the workload's process?"""
        info = self.sup.running(name)
        return old is not None and info is not None and info.pid == old.pid

    @staticmethod
    def _drain(
        drain: Drain | None,
        old: ProcInfo | None,
        alive: Callable[[], bool],
        timings: dict[str, float],
    ) -> Drained | None:
        if drain is None or old is None:
            return None
        drained = drain_old(drain, alive)
        timings["drain"] = drained.seconds
        return drained

    @staticmethod
    def _noted(drained: Drained | None, notes: list[str] | None) -> None:
        if drained is not None and not drained.idle and notes is not None:
            notes.append(drained.message)

    def _can_handoff(self, runtime: Runtime, spec: LaunchSpec) -> bool:
        """Blue/green when the supervisor can and the runtime's servers share their port."""
        can_handoff = getattr(runtime, "can_handoff", None)
        if isinstance(self.sup, HandoffSupervisor) and callable(can_handoff):
            return bool(can_handoff(spec.argv, self.sup.running(spec.name)))
        return False

    def prove(
        self, doc: WorkloadDoc, runtime: Runtime, version: str, vdir: Path, old: ProcInfo | None
    ) -> Proof:
        """Wait until the new process is proven (or the health timeout passes)."""
        name = str(doc["name"])
        health = doc.get("health") or {}
        timeout = float(health.get("timeoutSeconds", DEFAULT_HEALTH_TIMEOUT))
        deadline = time.monotonic() + timeout
        began = time.monotonic()
        has_health_check = bool(health.get("http")) or doc.get("kind") == "model"
        probe_proof: Proof | None = None
        last_health = "health not checked yet"
        while True:
            info = self.sup.running(name)
            if info is None:
                return self._exited_at_start(name)
            located, evidence = self.installed.locate(name, info)
            proc = judge_process(
                target=version,
                old_pid=old.pid if old else None,
                pid=info.pid,
                located=located,
                evidence=evidence,
            )
            if not proc.ok:
                return proc
            remaining = deadline - time.monotonic()
            if probe_proof is None:
                probe = runtime.probe_version(doc, vdir, max(min(remaining, 30.0), 1.0))
                probe_proof = judge_version_probe(version, probe)
                if not probe_proof.ok:
                    return probe_proof
            checked = runtime.check_health(doc, max(min(remaining, 2.0), 0.2))
            last_health = checked.message
            # Without a health URL, "healthy" only means "running": demand that it stays up
            # a moment, so a program that dies right after start is not declared proven.
            settled = has_health_check or time.monotonic() - began >= MIN_UP_WITHOUT_HEALTH
            if checked.ok and settled and self.sup.running(name) is not None:
                return Proof(True, f"{proc.reason}; {probe_proof.reason}; {checked.message}")
            if time.monotonic() >= deadline:
                return Proof(
                    False, f"health did not pass within {timeout:.0f}s (last: {last_health})"
                )
            time.sleep(POLL)

    def _exited_at_start(self, name: str) -> Proof:
        code = self.exit_code(name)
        logfile = self.installed.state.log_file(name)
        said = last_error_line(logfile)
        return Proof(
            False,
            f"the process exited at start (exit code {code}){': ' + said if said else ''}; "
            f"see {logfile}",
        )
