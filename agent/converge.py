"""Converge one workload: download, verify, stage, flip, restart, prove; roll back on failure.

Safe to kill at any instant: a version directory is complete or absent (staged in a temp
dir, then renamed), ``current`` is flipped atomically, and a journal in the state directory
says which update was in flight, so a restarted agent finishes the proof (or the rollback)
instead of guessing. A target that failed is remembered as (version, sha256, document) and
not retried until the desired document changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import isolation, procinfo, selfupdate
from agent.board import Board
from agent.download import fetch
from agent.errors import (
    AgentError,
    ProveError,
    Superseded,
    UnpackError,
    VerifyError,
    WorkloadError,
)
from agent.layout import WorkloadLayout, resolved_within
from agent.observe import Observer
from agent.procinfo import ProcInfo
from agent.prove import Proof, judge_probe, judge_process, locate_version
from agent.report import Observed
from agent.runtimes import Runtime, runtime_for
from agent.runtimes.supervisor import HandoffSupervisor, LaunchSpec, Supervisor
from agent.selfinstall import agent_location
from agent.state import StateDir, read_json, write_json
from agent.unpack import unpack

log = logging.getLogger(__name__)

DEFAULT_HEALTH_TIMEOUT = 60.0
POLL = 0.05
PROBE_CACHE_MAX = 64
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


def is_known_failure(entry: Mapping[str, Any], version: str, sha: str, key: str) -> bool:
    """This exact target (version, digest, desired document) already failed here."""
    return (entry.get("version"), entry.get("sha256"), entry.get("docKey")) == (version, sha, key)


def doc_key(generation: int, workload: Mapping[str, Any]) -> str:
    """Identity of one workload's desired entry in one document (pure)."""
    blob = json.dumps([generation, workload], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Outcome:
    ok: bool
    phase: str
    message: str
    timings: Mapping[str, float]


class Converger:
    def __init__(
        self,
        *,
        install_root: Path,
        state: StateDir,
        supervisor: Supervisor,
        board: Board,
        keep_versions: int = 3,
        exit_code: Callable[[str], int | None] | None = None,
        workload_user: str | None = None,
        superseded: Callable[[], bool] | None = None,
    ) -> None:
        self.root = install_root
        self.state = state
        self.sup = supervisor
        self.board = board
        self.keep = keep_versions
        self.exit_code = exit_code or (lambda _name: None)
        self.workload_user = workload_user  # agent config workloadUser; run.user wins
        # True once a newer desired generation has arrived: an in-flight download stops.
        self.superseded = superseded or (lambda: False)
        self._probe_cache: dict[tuple[int, str], tuple[str | None, str]] = {}
        # The agent itself, when it is installed under installRoot (see agent.selfupdate).
        self.me = selfupdate.who_am_i(install_root)
        self.observer = Observer(self)

    # -- helpers --------------------------------------------------------------------------
    def layout(self, name: str) -> WorkloadLayout:
        return WorkloadLayout(self.root, name)

    def managed(self, path: Path | str) -> bool:
        """Is ``path`` inside the install root? Resolved on both sides (symlinked roots)."""
        return resolved_within(path, self.root)

    def _doc_for(self, name: str, version: str, fallback: Mapping[str, Any]) -> Mapping[str, Any]:
        saved = read_json(self.state.workload_state(name) / f"{version}.json")
        return saved if isinstance(saved, dict) else fallback

    def spec(self, w: Mapping[str, Any], version: str) -> tuple[LaunchSpec, Runtime, Path]:
        w = isolation.with_user(w, self.workload_user)
        name = str(w["name"])
        vdir = Path(os.path.realpath(self.layout(name).version_dir(version)))
        runtime = runtime_for(w)
        wstate = self.state.workload_state(name)
        wstate.mkdir(parents=True, exist_ok=True)
        argv, env = runtime.command(w, vdir, wstate)
        user = isolation.effective_user(w, None)
        return LaunchSpec(name, tuple(argv), vdir, env, user), runtime, vdir

    def locate(self, name: str, info: ProcInfo) -> tuple[str | None, str]:
        layout = self.layout(name)
        evidence = [(kind, Path(os.path.realpath(p))) for kind, p in procinfo.evidence_paths(info)]
        return locate_version(evidence, Path(os.path.realpath(layout.versions)))

    def belongs(self, name: str) -> Callable[[ProcInfo], bool]:
        """For adoption: a recorded process is ours when it runs from this workload's versions."""
        return lambda info: self.locate(name, info)[0] is not None

    # -- the whole document ---------------------------------------------------------------
    def converge(self, document: Mapping[str, Any]) -> list[Outcome]:
        generation = int(document.get("generation", 0))
        wanted = {str(w["name"]) for w in document.get("workloads", [])}
        for name in self._known_workloads() - wanted:
            log.info("workload %s is no longer desired: stopping it", name)
            self.sup.stop(name)
            self.board.drop(name)
        outcomes = []
        for w in document.get("workloads", []):
            try:
                outcomes.append(self.converge_one(w, generation))
            except Superseded as exc:
                # Not a failure of this workload: the whole document is stale. What runs
                # keeps running; the next pass converges the newer document.
                log.info("%s: %s", w.get("name"), exc)
                self.board.set(str(w["name"]), phase=None, message=None)
                break
            except AgentError as exc:
                log.error("converging %s failed: %s", w.get("name"), exc)
                if isinstance(exc, VerifyError | UnpackError):
                    # A wrong digest or an unsafe archive will not fix itself: no retry until
                    # the desired document changes (a network error is retried at resync).
                    self.remember_failed(w, doc_key(generation, w), "Failed", str(exc))
                self.board.set(str(w["name"]), phase="Failed", message=str(exc))
                outcomes.append(Outcome(False, "Failed", str(exc), {}))
        return outcomes

    def remember_failed(self, w: Mapping[str, Any], key: str, phase: str, message: str) -> None:
        failed = self.state.read_failed()
        failed[str(w["name"])] = {
            "version": str(w["version"]),
            "sha256": str(w["artifact"]["sha256"]),
            "docKey": key,
            "phase": phase,
            "message": message,
        }
        self.state.write_failed(failed)

    def _known_workloads(self) -> set[str]:
        procs = self.state.process_file("x").parent
        names = {p.stem for p in procs.glob("*.json")} if procs.is_dir() else set()
        return names

    def adopt_all(self, document: Mapping[str, Any] | None) -> None:
        """At start: take over workloads an earlier agent left running."""
        names = {str(w["name"]) for w in (document or {}).get("workloads", [])}
        for name in (names | self._known_workloads()) - {self.me.name}:
            self.sup.adopt(name, self.belongs(name))

    # -- one workload ---------------------------------------------------------------------
    def converge_one(self, w: Mapping[str, Any], generation: int) -> Outcome:
        name, version = str(w["name"]), str(w["version"])
        artifact = w["artifact"]
        sha = str(artifact["sha256"])
        key = doc_key(generation, w)
        layout = self.layout(name)
        layout.clean_leftovers()
        failed = self.state.read_failed()
        entry = failed.get(name)
        if self.me.name is not None and name == self.me.name:
            return selfupdate.converge_self(self, w, key, entry)
        if name == selfupdate.DEFAULT_NAME:
            raise WorkloadError(
                f"{name} is the agent itself, but this agent is not installed under "
                f"installRoot {self.root} (its code is in {agent_location()}); "
                "it will not run a second agent: install it under installRoot to self-update"
            )
        journal = read_json(self.state.journal_file(name))
        if entry and is_known_failure(entry, version, sha, key):
            # Known bad target for this very document: keep the restored state, do not retry.
            if isinstance(journal, dict) and layout.current_version() == version:
                self._restore(w, journal)
            self.state.journal_file(name).unlink(missing_ok=True)
            self._ensure_running(w)
            return self.replay_failure(name, entry, version)
        if entry:
            failed.pop(name)
            self.state.write_failed(failed)

        self.board.set(name, desired_version=version)
        current = layout.current_version()
        if current == version and layout.installed_sha256(version) == sha:
            if isinstance(journal, dict) and journal.get("to") == version:
                log.info("%s: finishing the interrupted update to %s", name, version)
                return self._activate(w, journal, {"received": time.time()}, key)
            return self._steady(w)

        timings: dict[str, float] = {"received": time.time()}
        t0 = time.monotonic()
        self.stage(w, layout, timings)
        from_previous = layout.previous_version()
        if (
            isinstance(journal, dict)
            and (journal.get("to"), journal.get("from")) == (version, current)
            and "fromPrevious" in journal
        ):
            # Killed between journaling and flipping: `previous` may already be flipped, so
            # keep what it was before the first attempt.
            from_previous = journal["fromPrevious"]
        journal = {
            "to": version,
            "sha256": sha,
            "from": current,
            "fromPrevious": from_previous,
            "docKey": key,
        }
        write_json(self.state.journal_file(name), journal)
        t1 = time.monotonic()
        if current and current != version:
            layout.flip(layout.previous, current)
        layout.flip(layout.current, version)
        timings["flip"] = time.monotonic() - t1
        timings["stageTotal"] = time.monotonic() - t0
        return self._activate(w, journal, timings, key)

    def stage(
        self, w: Mapping[str, Any], layout: WorkloadLayout, timings: dict[str, float]
    ) -> None:
        name, version = str(w["name"]), str(w["version"])
        artifact = w["artifact"]
        sha = str(artifact["sha256"])
        installed = layout.installed_sha256(version)
        if installed == sha:
            self.board.set(name, phase="Staged", message=None)
            timings.update(download=0.0, verify=0.0, unpack=0.0)
            return
        if installed is not None and installed != sha:
            if layout.current_version() == version:
                raise VerifyError(
                    f"{name} {version} is installed with sha256 {installed} but the release "
                    f"now says {sha}; publish the change as a new version"
                )
            shutil.rmtree(layout.version_dir(version), ignore_errors=True)
        size = artifact.get("size")
        if not isinstance(size, int):
            raise VerifyError(
                f"{name} {version}: the artifact has no size; a download without a bound is "
                "refused (artifacts[].size is required)"
            )
        self.board.set(name, phase="Downloading", message=None)
        got = fetch(
            str(artifact["url"]),
            layout.downloads,
            sha256=sha,
            size=size,
            on_phase=lambda phase: self.board.set(name, phase=phase),
            superseded=self.superseded,
        )
        timings["download"], timings["verify"] = got.seconds, got.verify_seconds
        if got.size >= 8 << 20:
            log.info(
                "%s %s: %d MiB downloaded in %.2fs, verified in %.2fs",
                name,
                version,
                got.size >> 20,
                got.seconds,
                got.verify_seconds,
            )
        t = time.monotonic()
        staging = layout.staging_dir()
        filename = Path(urllib.parse.urlsplit(str(artifact["url"])).path).name or name
        try:
            unpacked = artifact.get("unpackedSize")
            unpack(
                got.path,
                staging,
                filename=filename,
                unpacked_size=unpacked if isinstance(unpacked, int) else None,
            )
            layout.commit_staged(staging, version, sha)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            got.path.unlink(missing_ok=True)
        # Partial downloads of other artifacts will not be resumed any more.
        for stale in layout.downloads.glob("*.part"):
            stale.unlink(missing_ok=True)
        # Remember how this version is run, for rollbacks to it later.
        write_json(self.state.workload_state(name) / f"{version}.json", dict(w))
        timings["unpack"] = time.monotonic() - t
        self.board.set(name, phase="Staged")

    def _activate(
        self, w: Mapping[str, Any], journal: Mapping[str, Any], timings: dict[str, float], key: str
    ) -> Outcome:
        name, version = str(w["name"]), str(w["version"])
        self.board.set(name, phase="Restarting", message=None)
        old = self.sup.running(name)
        self.sup.set_auto_restart(name, False)
        t = time.monotonic()
        proof, _ = self._restart_and_prove(w, version, old, timings)
        timings["total"] = sum(
            timings.get(k, 0.0)
            for k in ("download", "verify", "unpack", "flip", "restart", "prove")
        )
        if proof.ok:
            self.sup.set_auto_restart(name, True)
            self.state.journal_file(name).unlink(missing_ok=True)
            self.layout(name).prune(self.keep)
            self.board.set(name, phase="Healthy", message=None)
            self._record_timings(name, version, timings, ok=True)
            log.info("%s %s converged: %s", name, version, proof.reason)
            return Outcome(True, "Healthy", proof.reason, timings)

        reason = f"{version} failed: {proof.reason}"
        log.error("%s %s", name, reason)
        failed = self.state.read_failed()
        failed[name] = {
            "version": version,
            "sha256": journal.get("sha256"),
            "docKey": key,
            "phase": "Failed",
            "message": reason,
        }
        self.state.write_failed(failed)
        message = self._restore(w, journal, reason=reason)
        failed[name]["message"] = message
        self.state.write_failed(failed)
        self.board.set(name, phase="Failed", message=message)
        timings["rollback"] = time.monotonic() - t
        self._record_timings(name, version, timings, ok=False)
        return Outcome(False, "Failed", message, timings)

    def _restore(self, w: Mapping[str, Any], journal: Mapping[str, Any], reason: str = "") -> str:
        """Undo an update described by ``journal``: flip back, restart the old version, prove it."""
        name = str(w["name"])
        layout = self.layout(name)
        back = journal.get("from")
        if back and layout.is_complete(str(back)):
            layout.flip(layout.current, str(back))
            prev = journal.get("fromPrevious")
            layout.flip(layout.previous, str(prev) if prev and layout.is_complete(prev) else None)
            old_doc = self._doc_for(name, str(back), w)
            failed_proc = self.sup.running(name)
            proof, _ = self._restart_and_prove(old_doc, str(back), failed_proc, {})
            self.sup.set_auto_restart(name, True)
            self.state.journal_file(name).unlink(missing_ok=True)
            if proof.ok:
                return f"{reason}; rolled back to {back} ({proof.reason})"
            return f"{reason}; rolled back to {back}, which does not prove healthy: {proof.reason}"
        self.sup.stop(name)
        layout.flip(layout.current, None)
        self.state.journal_file(name).unlink(missing_ok=True)
        return f"{reason}; no previous version to roll back to: stopped"

    def _restart_and_prove(
        self,
        w: Mapping[str, Any],
        version: str,
        old: ProcInfo | None,
        timings: dict[str, float],
    ) -> tuple[Proof, ProcInfo | None]:
        t = time.monotonic()
        sup = self.sup
        handoff = False
        try:
            spec, runtime, vdir = self.spec(w, version)
            # Blue/green for runtimes whose servers share their port (model servers): the
            # new process starts beside the old one, which serves until the proof is done.
            can_handoff = getattr(runtime, "can_handoff", None)
            if isinstance(sup, HandoffSupervisor) and callable(can_handoff):
                handoff = bool(can_handoff(spec.argv, sup.running(spec.name)))
            if isinstance(sup, HandoffSupervisor) and handoff:
                info = sup.handoff(spec)
            else:
                info = sup.restart(spec)
        except WorkloadError as exc:
            timings["restart"] = time.monotonic() - t
            return Proof(False, str(exc)), None
        timings["restart"] = time.monotonic() - t
        t = time.monotonic()
        proof = self.prove(w, runtime, version, vdir, old)
        timings["prove"] = time.monotonic() - t
        if isinstance(sup, HandoffSupervisor) and handoff:
            # Proven or not, the old process goes now (a failed proof rolls back to a fresh
            # process of the old version).
            t = time.monotonic()
            sup.retire(spec.name)
            timings["retire"] = time.monotonic() - t
        return proof, info

    def prove(
        self,
        w: Mapping[str, Any],
        runtime: Runtime,
        version: str,
        vdir: Path,
        old: ProcInfo | None,
    ) -> Proof:
        """Wait until the new process is proven (or the health timeout passes)."""
        w = isolation.with_user(w, self.workload_user)  # the probe runs as the workload does
        name = str(w["name"])
        timeout = float((w.get("health") or {}).get("timeoutSeconds", DEFAULT_HEALTH_TIMEOUT))
        deadline = time.monotonic() + timeout
        probe_proof: Proof | None = None
        began = time.monotonic()
        has_health_url = bool((w.get("health") or {}).get("http")) or w.get("kind") == "model"
        last_health = "health not checked yet"
        while True:
            info = self.sup.running(name)
            if info is None:
                code = self.exit_code(name)
                logfile = self.state.log_file(name)
                said = last_error_line(logfile)
                return Proof(
                    False,
                    f"the process exited at start (exit code {code})"
                    f"{': ' + said if said else ''}; see {logfile}",
                )
            located, evidence = self.locate(name, info)
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
                probe = runtime.probe_version(w, vdir, max(min(remaining, 30.0), 1.0))
                probe_proof = judge_probe(
                    target=version,
                    configured=probe.configured,
                    ok=probe.ok,
                    output=probe.output,
                    message=probe.message,
                )
                if not probe_proof.ok:
                    return probe_proof
            health = runtime.check_health(w, max(min(remaining, 2.0), 0.2))
            last_health = health.message
            # Without a health URL, "healthy" only means "running": demand that it stays up
            # a moment, so a program that dies right after start is not declared proven.
            up_for = time.monotonic() - began
            settled = has_health_url or up_for >= MIN_UP_WITHOUT_HEALTH
            if health.ok and settled and self.sup.running(name) is not None:
                return Proof(True, f"{proc.reason}; {probe_proof.reason}; {health.message}")
            if time.monotonic() >= deadline:
                return Proof(
                    False, f"health did not pass within {timeout:.0f}s (last: {last_health})"
                )
            time.sleep(POLL)

    def _steady(self, w: Mapping[str, Any]) -> Outcome:
        """``current`` already is the target: make sure that is what runs."""
        name, version = str(w["name"]), str(w["version"])
        self._ensure_running(w)
        self.sup.set_auto_restart(name, True)
        self.board.set(name, phase=None, message=None)
        return Outcome(True, "Healthy", f"{name} {version} already current", {})

    def replay_failure(self, name: str, entry: Mapping[str, Any], version: str) -> Outcome:
        """Report a remembered failure of ``version`` again instead of retrying it."""
        self.board.set(
            name, phase=entry.get("phase"), message=entry.get("message"), desired_version=version
        )
        return Outcome(False, str(entry.get("phase")), str(entry.get("message")), {})

    def _ensure_running(self, w: Mapping[str, Any]) -> None:
        name = str(w["name"])
        current = self.layout(name).current_version()
        if current is None:
            self.sup.stop(name)
            return
        info = self.sup.running(name)
        if info is not None and self.locate(name, info)[0] == current:
            return
        doc = self._doc_for(name, current, w)
        log.info("%s: starting current version %s", name, current)
        try:
            spec, _, _ = self.spec(doc, current)
            self.sup.restart(spec)
        except WorkloadError as exc:
            log.error("%s: cannot start %s: %s", name, current, exc)
        self.sup.set_auto_restart(name, True)

    # -- manual rollback --------------------------------------------------------------------
    def rollback(self, name: str, desired: Mapping[str, Any] | None) -> str:
        """Flip ``current`` to ``previous`` by hand, restart and prove; remembered as a failed
        target so the daemon does not re-apply it until the desired document changes."""
        layout = self.layout(name)
        current, previous = layout.current_version(), layout.previous_version()
        if previous is None or not layout.is_complete(previous):
            raise WorkloadError(f"{name}: no previous version to roll back to")
        if current is None:
            raise WorkloadError(f"{name}: nothing is installed")
        w_desired = next(
            (w for w in (desired or {}).get("workloads", []) if w.get("name") == name), None
        )
        fallback: Mapping[str, Any] = w_desired or {"name": name, "kind": "process"}
        old_doc = self._doc_for(name, previous, fallback)
        layout.flip(layout.current, previous)
        layout.flip(layout.previous, current)
        proof, _ = self._restart_and_prove(old_doc, previous, self.sup.running(name), {})
        self.sup.set_auto_restart(name, True)
        message = f"rolled back by hand from {current} to {previous}: {proof.reason}"
        failed = self.state.read_failed()
        if w_desired is not None and str(w_desired["version"]) != previous:
            failed[name] = {
                "version": str(w_desired["version"]),
                "sha256": str(w_desired["artifact"]["sha256"]),
                "docKey": doc_key(int((desired or {}).get("generation", 0)), w_desired),
                "phase": "RolledBack",
                "message": message,
            }
            self.board.set(name, phase="RolledBack", message=message)
        else:
            # Rolled "back" onto the desired version itself: nothing to hold back any more.
            failed.pop(name, None)
            self.board.set(name, phase=None, message=None)
        self.state.write_failed(failed)
        if not proof.ok:
            raise ProveError(message)
        return message

    # -- observation --------------------------------------------------------------------------
    def observe(self, w: Mapping[str, Any]) -> Observed:
        """What runs now, from the process itself (never from intent)."""
        return self.observer.observe(w)

    def _record_timings(
        self, name: str, version: str, timings: Mapping[str, float], ok: bool
    ) -> None:
        line = json.dumps({"workload": name, "version": version, "ok": ok, **timings})
        with open(self.state.timings_file, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        log.info(
            "phase timings %s %s: %s",
            name,
            version,
            " ".join(f"{k}={v:.3f}s" for k, v in timings.items() if k != "received"),
        )
