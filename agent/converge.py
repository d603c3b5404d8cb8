"""Converge one workload: download, verify, stage, flip, restart, prove; roll back on failure.

Safe to kill at any instant: a version directory is complete or absent (``agent.stage``),
``current`` is flipped atomically, and a journal in the state directory says which update
was in flight, so a restarted agent finishes the proof (or the rollback) instead of
guessing. A target that failed is remembered in the ledger (``agent.ledger``) and not
retried until a new version is desired or the operator retries (``retryGeneration``); a
transient failure (:class:`agent.errors.Unreachable`) is retried with backoff instead.
The agent's own workload is converged by ``agent.selfupdate``; proof is gathered by
``agent.restart``, which also drains the old process (``agent.drain``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent import secrets
from agent.backoff import backoff_delay
from agent.board import Board
from agent.configdir import ConfigDirs, DesiredConfig
from agent.datadir import DataSettings
from agent.errors import AgentError, Superseded, Unreachable, WorkloadError
from agent.installed import Installed
from agent.journal import Journal
from agent.ledger import FailedTarget, Ledger, replay_failure
from agent.observe import Observer
from agent.report import Observed
from agent.restart import Restarter
from agent.rollback import rollback
from agent.selfinstall import DEFAULT_NAME, agent_location, who_am_i
from agent.selfupdate import SelfUpdate
from agent.stage import stage
from agent.state import StateDir
from agent.supervise.supervisor import Supervisor
from agent.workload import Desired, Outcome, Workload, doc_key
from fleetkeeper_common.age import Identity

__all__ = ["Converger", "Outcome", "doc_key"]

# Quick exits in a row (each within the supervisor's STABLE_SECONDS of its start) after which
# a version that passed its proof counts as failed: the supervisor's backoff gives it
# about 0.5 + 1 + 2 s of restarts first.
CRASH_LOOP_EXITS = 3

log = logging.getLogger(__name__)


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
        retry_cap: float = 60.0,
        identity: Identity | None = None,
    ) -> None:
        self.root = install_root
        self.state = state
        self.sup = supervisor
        self.board = board
        self.keep = keep_versions
        # workloadUser of the agent config; a release's run.user wins.
        # identity: the node's age key, which opens the workloads' secrets (agent.secrets)
        self.installed = Installed(install_root, state, workload_user, identity)
        # True once a newer desired generation has arrived: an in-flight download stops.
        self.superseded = superseded or (lambda: False)
        self.ledger = Ledger(state)
        # transient download failures in a row, per workload (backoff; not remembered)
        self.retries: dict[str, int] = {}
        self.retry_cap = retry_cap
        self.restarter = Restarter(self.installed, supervisor, exit_code or (lambda _name: None))
        # The agent itself, when it is installed under installRoot (see agent.selfupdate).
        self.me = who_am_i(install_root)
        self.observer = Observer(self.installed, supervisor, self.me)
        self.self_update = SelfUpdate(self.installed, board, self.ledger, self.me)

    def managed(self, path: Path | str) -> bool:
        """Is ``path`` inside the install root? Resolved on both sides (symlinked roots)."""
        return self.installed.managed(path)

    # -- the whole document ---------------------------------------------------------------
    def converge(self, document: Mapping[str, Any]) -> list[Outcome]:
        """Converge every workload of ``document``; stop those no longer desired. An outcome
        with ``exec_argv`` (a self-update handing over) ends the pass."""
        desired = Desired.parse(document)
        for name in self.installed.known_workloads() - desired.names():
            log.info("workload %s is no longer desired: stopping it", name)
            self.sup.stop(name)
            self.board.drop(name)
        outcomes = []
        for entry in desired.entries:
            self.ledger.rekey(str(entry.get("name")), desired.legacy_key(entry), desired.key(entry))
            try:
                outcomes.append(self.converge_one(Workload.parse(entry), desired.key(entry)))
            except Superseded as exc:
                # Not a failure of this workload: the whole document is stale. What runs
                # keeps running; the next pass converges the newer document.
                log.info("%s: %s", entry.get("name"), exc)
                self.board.set(str(entry.get("name")), phase=None, message=None)
                break
            except Unreachable as exc:
                outcomes.append(self._unreachable(str(entry.get("name")), exc))
                continue
            except AgentError as exc:
                outcomes.append(self._failed(entry, desired.key(entry), exc))
            self.retries.pop(str(entry.get("name")), None)
            if outcomes[-1].exec_argv:
                break
        return outcomes

    def _unreachable(self, name: str, exc: Unreachable) -> Outcome:
        """A transient failure (network, artifact server, disk): not the version's. What
        runs keeps running; the download is tried again after a backoff, and the report
        says Downloading with the reason, never Failed."""
        attempt = self.retries.get(name, 0)
        self.retries[name] = attempt + 1
        delay = backoff_delay(attempt, base=1.0, cap=self.retry_cap, draw=random.random())
        message = f"retrying in {delay:.0f}s: {exc}"
        log.warning("%s: %s", name, message)
        self.board.set(name, phase="Downloading", message=message)
        return Outcome(False, "Downloading", message, {}, retry_at=time.time() + delay)

    def _failed(self, entry: Mapping[str, Any], key: str, exc: AgentError) -> Outcome:
        name = str(entry.get("name"))
        log.error("converging %s failed: %s", name, exc)
        if isinstance(exc, WorkloadError):
            # A failure of the version itself (wrong digest, unsafe archive, a URL the
            # server says no to, no program to run, a secret this node cannot open) will
            # not fix itself: not tried again until a new version is desired or the
            # operator retries (retryGeneration).
            try:
                w = Workload.parse(entry)
            except WorkloadError:
                w = None
            if w is not None:
                self.ledger.remember(
                    name, FailedTarget(w.version, w.artifact.sha256, key, "Failed", str(exc))
                )
        self.board.set(name, phase="Failed", message=str(exc))
        return Outcome(False, "Failed", str(exc), {})

    def adopt_all(self, document: Mapping[str, Any] | None) -> None:
        """At start: take over workloads an earlier agent left running."""
        names = Desired.parse(document).names()
        for name in (names | self.installed.known_workloads()) - {self.me.name}:
            self.sup.adopt(name, self.installed.belongs(name))

    # -- one workload ---------------------------------------------------------------------
    def converge_one(self, w: Workload, key: str) -> Outcome:
        name, version, sha = w.name, w.version, w.artifact.sha256
        layout = self.installed.layout(name)
        layout.clean_leftovers()
        self.installed.config_dirs(name).clean_leftovers()
        failed = self.ledger.get(name)
        if self.me.name is not None and name == self.me.name:
            return self.self_update.converge(w, key, failed)
        if name == DEFAULT_NAME:
            raise WorkloadError(
                f"{name} is the agent itself, but this agent is not installed under "
                f"installRoot {self.root} (its code is in {agent_location()}); "
                "it will not run a second agent: install it under installRoot to self-update"
            )
        journal = Journal.read(self.state, name)
        if failed and failed.is_target(version, sha, key):
            # Known bad target for this very document: keep the restored state, do not retry.
            if journal is not None and layout.current_version() == version:
                self._restore(w, journal)
            Journal.clear(self.state, name)
            self._ensure_running(w)
            return replay_failure(self.board, name, failed, version)
        if failed:
            self.ledger.forget(name)

        self.board.set(name, desired_version=version)
        current = layout.current_version()
        config = DesiredConfig.parse(w.doc)  # checked before anything is touched
        dirs = self.installed.config_dirs(name)
        installed = current == version and layout.installed_sha256(version) == sha
        if installed:
            if journal is not None and journal.to == version:
                log.info("%s: finishing the interrupted update to %s", name, version)
                return self._activate(w, journal, {"received": time.time()}, key)
            config_current = dirs.current_key() == config.key and dirs.owed() is None
            if config_current and secrets.is_current(layout.dir, version, w.doc):
                return self._steady(w, key)
        # Before anything is touched: a secret this node cannot open fails the target here,
        # and what runs keeps running.
        secrets.check_secrets(w.doc, self.installed.identity)
        if installed:
            if secrets.is_current(layout.dir, version, w.doc):
                return self._reconfigure(w, config, key)
            # a rotation, perhaps with a config change: one restart takes both (a failed
            # proof flips the config back in _restore)
            dirs.write(config)
            self._flip_config(dirs, config)
            return self._rekey(w, key)

        if w.not_before is not None and w.not_before > time.time():
            # spread: keep running what runs (and reporting it) until the node's turn
            when = w.doc.get("notBefore")
            message = f"waiting until {when} to fetch {version} (rollout.spreadSeconds)"
            self.board.set(name, phase="Pending", message=message)
            return Outcome(False, "Pending", message, {}, retry_at=w.not_before)
        timings: dict[str, float] = {"received": time.time()}
        t0 = time.monotonic()
        stage(w, self.installed, self.board, timings, superseded=self.superseded)
        dirs.write(config)
        data_note = self._data_before_flip(w, current)
        from_previous = layout.previous_version()
        if (
            journal is not None
            and (journal.to, journal.back) == (version, current)
            and journal.knows_previous
        ):
            # Killed between journaling and flipping: `previous` may already be flipped, so
            # keep what it was before the first attempt.
            from_previous = journal.from_previous
        journal = Journal(version, sha, current, from_previous, key)
        journal.write(self.state, name)
        t1 = time.monotonic()
        self._flip_config(dirs, config)
        if current and current != version:
            layout.flip(layout.previous, current)
        layout.flip(layout.current, version)
        timings["flip"] = time.monotonic() - t1
        timings["stageTotal"] = time.monotonic() - t0
        outcome = self._activate(w, journal, timings, key)
        if data_note and outcome.ok:
            outcome = replace(outcome, message=f"{outcome.message}; {data_note}")
        return outcome

    def _rekey(self, w: Workload, key: str) -> Outcome:
        """The version runs but its secrets changed (a rotation): restart with the new ones
        and prove it; on failure the old launch document (old ciphertext) is restarted."""
        name, version = w.name, w.version
        layout = self.installed.layout(name)
        log.info("%s %s: its secrets changed; restarting with the new ones", name, version)
        journal = Journal(version, w.artifact.sha256, version, layout.previous_version(), key)
        journal.write(self.state, name)
        outcome = self._activate(w, journal, {"received": time.time()}, key)
        if outcome.ok:  # a later rollback to this version uses the new ciphertext
            self.installed.save_launch_doc(name, version, w.doc)
        return outcome

    def _activate(
        self, w: Workload, journal: Journal, timings: dict[str, float], key: str
    ) -> Outcome:
        name, version = w.name, w.version
        self.board.set(name, phase="Restarting", message=None)
        old = self.sup.running(name)
        self.sup.set_auto_restart(name, False)
        t = time.monotonic()
        notes: list[str] = []
        proof = self.restarter.restart_and_prove(w.doc, version, old, timings, w.drain, notes)
        timings["total"] = sum(
            timings.get(k, 0.0)
            for k in ("download", "verify", "unpack", "flip", "restart", "prove")
        )
        if proof.ok:
            self.sup.set_auto_restart(name, True)
            Journal.clear(self.state, name)
            layout = self.installed.layout(name)
            layout.prune(self.keep)
            kept = (
                {p.name for p in layout.versions.iterdir()} if layout.versions.is_dir() else set()
            )
            secrets.prune(layout.dir, kept)
            dirs = self.installed.config_dirs(name)
            dirs.settle()
            dirs.prune()
            # a drain that timed out is said in the report until the next update
            note = "; ".join(notes) or None
            self.board.set(name, phase="Healthy", message=note)
            self._record_timings(name, version, timings, ok=True, notes=notes)
            log.info("%s %s converged: %s", name, version, proof.reason)
            return Outcome(True, "Healthy", "; ".join([proof.reason, *notes]), timings)

        reason = "; ".join([f"{version} failed: {proof.reason}", *notes])
        log.error("%s %s", name, reason)
        target = FailedTarget(version, journal.sha256, key, "Failed", reason)
        # Recorded before the rollback too: an agent killed during it must not retry.
        self.ledger.remember(name, target)
        message = self._restore(w, journal, reason=reason)
        self.ledger.remember(name, replace(target, message=message))
        self.board.set(name, phase="Failed", message=message)
        timings["rollback"] = time.monotonic() - t
        self._record_timings(name, version, timings, ok=False, notes=notes)
        return Outcome(False, "Failed", message, timings)

    def _restore(self, w: Workload, journal: Journal, reason: str = "") -> str:
        """Undo an update described by ``journal``: flip back, restart the old version, prove it."""
        name = w.name
        layout = self.installed.layout(name)
        back = journal.back
        if back and layout.is_complete(back):
            layout.flip_back(back, journal.from_previous)
            self._config_back(name)
            data = self.installed.data_dir(name)
            if journal.to is not None and data.taken_for() == (back, journal.to):
                # the failed version must not write into the data being put back
                self.sup.stop(name)
                note = data.restore(back, journal.to)
                reason = f"{reason}; {note}" if note else reason
            old_doc = self.installed.launch_doc(name, back, w.doc)
            failed_proc = self.sup.running(name)
            proof = self.restarter.restart_and_prove(old_doc, back, failed_proc, {})
            self.sup.set_auto_restart(name, True)
            Journal.clear(self.state, name)
            if proof.ok:
                return f"{reason}; rolled back to {back} ({proof.reason})"
            return f"{reason}; rolled back to {back}, which does not prove healthy: {proof.reason}"
        self.sup.stop(name)
        layout.flip(layout.current, None)
        self._config_back(name)
        Journal.clear(self.state, name)
        return f"{reason}; no previous version to roll back to: stopped"

    # -- config files and data (issue 17; agent.configdir, agent.datadir) -----------------
    def _flip_config(self, dirs: ConfigDirs, config: DesiredConfig) -> bool:
        """Flip ``config`` to ``config``'s (written) directory; True when what the workload
        reads changed. The restart it needs is recorded first (``owe_restart``), so an agent
        killed before the restart still restarts, and a failed proof can flip back."""
        current = dirs.current_key()
        if current == config.key:
            return False
        changed = not (current is None and not config.files)  # an empty dir appearing is not
        if changed:
            dirs.owe_restart(config.key, current, dirs.key_of(dirs.previous_link))
        dirs.flip(config.key)
        return changed

    def _config_back(self, name: str) -> None:
        """Undo the config flip of the update being rolled back, if it made one."""
        dirs = self.installed.config_dirs(name)
        owed = dirs.owed()
        if owed is not None:
            _, back, back_previous = owed
            dirs.flip_back(back, back_previous)
            dirs.settle()

    def _data_before_flip(self, w: Workload, current: str | None) -> str | None:
        """Before ``current`` gives way to ``w.version``: put the data snapshot back when
        this undoes the upgrade it was taken before, else take one (``data.snapshot``)."""
        if current is None or current == w.version:
            return None
        data = self.installed.data_dir(w.name)
        settings = DataSettings.parse(w.doc)
        undoing = data.taken_for() == (w.version, current)
        if not (undoing or settings.snapshot):
            return None
        self.sup.stop(w.name)  # a copy of data a running process writes is not a copy
        if undoing:
            return data.restore(w.version, current)
        return data.take(current, w.version, settings)

    def _reconfigure(self, w: Workload, config: DesiredConfig, key: str) -> Outcome:
        """Only the config changed: write and flip it; with ``onChange: restart`` restart
        the same version and prove it, flipping the config back when that fails."""
        name, version = w.name, w.version
        dirs = self.installed.config_dirs(name)
        dirs.write(config)
        self._flip_config(dirs, config)
        owed = dirs.owed()
        shown = config.digest or "none"
        if owed is None or config.on_change == "none":
            dirs.settle()
            dirs.prune()
            self._ensure_running(w)
            self.sup.set_auto_restart(name, True)
            self.board.set(name, phase=None, message=None)
            how = "" if owed is None else " (onChange: none, not restarted)"
            return Outcome(True, "Healthy", f"{name} {version}: config {shown} in place{how}", {})
        self.board.set(name, phase="Restarting", message=None)
        old = self.sup.running(name)
        self.sup.set_auto_restart(name, False)
        timings: dict[str, float] = {"received": time.time()}
        proof = self.restarter.restart_and_prove(w.doc, version, old, timings, w.drain)
        self.sup.set_auto_restart(name, True)
        if proof.ok:
            dirs.settle()
            dirs.prune()
            self.board.set(name, phase="Healthy", message=None)
            log.info("%s %s restarted with config %s: %s", name, version, shown, proof.reason)
            return Outcome(True, "Healthy", proof.reason, timings)
        reason = f"{version} with config {shown} failed: {proof.reason}"
        log.error("%s %s", name, reason)
        target = FailedTarget(version, w.artifact.sha256, key, "Failed", reason)
        self.ledger.remember(name, target)
        _, back, back_previous = owed
        dirs.flip_back(back, back_previous)
        dirs.settle()
        again = self.restarter.restart_and_prove(w.doc, version, self.sup.running(name), {})
        message = f"{reason}; config {back or 'none'} put back ({again.reason})"
        self.ledger.remember(name, replace(target, message=message))
        self.board.set(name, phase="Failed", message=message)
        return Outcome(False, "Failed", message, timings)

    def _steady(self, w: Workload, key: str) -> Outcome:
        """``current`` already is the target: make sure that is what runs (and roll back
        a version that passed its proof but has crashed since, again and again)."""
        crashes = self._crash_count(w.name)
        previous = self.installed.layout(w.name).previous_version()
        if crashes >= CRASH_LOOP_EXITS and previous not in (None, w.version):
            return self._crash_loop(w, key, crashes, str(previous))
        self._ensure_running(w)
        self.sup.set_auto_restart(w.name, True)
        self.board.set(w.name, phase=None, message=None)
        return Outcome(True, "Healthy", f"{w.name} {w.version} already current", {})

    def _crash_count(self, name: str) -> int:
        # Only the child supervisor counts quick exits; systemd/launchd do their own limits.
        count = getattr(self.sup, "crash_count", None)
        return int(count(name)) if callable(count) else 0

    def _crash_loop(self, w: Workload, key: str, crashes: int, previous: str) -> Outcome:
        """A crash loop is a failure of the version: flip back to ``previous``, prove it,
        remember the target (as a failed proof would have)."""
        note = self.sup.crash_note(w.name) or "exited"
        reason = f"{w.version} failed: crash loop ({crashes} exits in a row; last: {note})"
        log.error("%s %s", w.name, reason)
        target = FailedTarget(w.version, w.artifact.sha256, key, "Failed", reason)
        self.ledger.remember(w.name, target)
        journal = Journal(w.version, w.artifact.sha256, previous, w.version, key)
        self.sup.set_auto_restart(w.name, False)
        message = self._restore(w, journal, reason=reason)
        self.ledger.remember(w.name, replace(target, message=message))
        self.board.set(w.name, phase="Failed", message=message)
        return Outcome(False, "Failed", message, {})

    def _ensure_running(self, w: Workload) -> None:
        name = w.name
        current = self.installed.layout(name).current_version()
        if current is None:
            self.sup.stop(name)
            return
        info = self.sup.running(name)
        if info is not None and self.installed.locate(name, info)[0] == current:
            return
        doc = self.installed.launch_doc(name, current, w.doc)
        log.info("%s: starting current version %s", name, current)
        try:
            spec, _, _ = self.installed.spec(doc, current)
            self.sup.restart(spec)
        except WorkloadError as exc:
            log.error("%s: cannot start %s: %s", name, current, exc)
        self.sup.set_auto_restart(name, True)

    def rollback(self, name: str, desired: Mapping[str, Any] | None) -> str:
        """Flip ``current`` to ``previous`` by hand (see :func:`agent.rollback.rollback`)."""
        return rollback(
            name,
            desired,
            installed=self.installed,
            restarter=self.restarter,
            ledger=self.ledger,
            board=self.board,
        )

    # -- observation --------------------------------------------------------------------------
    def observe(self, entry: Mapping[str, Any]) -> Observed:
        """What runs now, from the process itself (never from intent)."""
        return self.observer.observe(Workload.parse(entry))

    def _record_timings(
        self,
        name: str,
        version: str,
        timings: Mapping[str, float],
        ok: bool,
        notes: list[str] | None = None,
    ) -> None:
        record: dict[str, object] = {"workload": name, "version": version, "ok": ok, **timings}
        if notes:
            record["notes"] = notes  # e.g. a drain that timed out
        line = json.dumps(record)
        with open(self.state.timings_file, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        log.info(
            "phase timings %s %s: %s",
            name,
            version,
            " ".join(f"{k}={v:.3f}s" for k, v in timings.items() if k != "received"),
        )
