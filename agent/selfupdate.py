"""The agent updates itself like a workload, when it is installed under its own installRoot.

The agent is "managed" when its code resolves into ``<installRoot>/<name>/versions/<v>/``
(resolved paths on both sides, so a symlinked root counts) and the service manager starts it
through ``<installRoot>/<name>/current/...``. A desired workload called ``<name>`` is then
the agent itself:

1. stage the new version (download, verify, unpack) like any workload;
2. preflight: its ``versionProbe`` must run and name the target version;
3. journal the update (``stateDir/self-update.json``), flip ``previous`` and ``current``;
4. ``exec`` the new version in place (same PID; workloads keep running and are adopted);
5. the new agent counts its starts in the journal and confirms itself after running
   steadily for ``selfUpdateConfirmSeconds``; a version that keeps failing to get there (the service
   manager restarts it through ``current``) flips back after ``MAX_STARTS`` starts and
   execs the previous version; a handover that did not happen (the old version runs again)
   flips back at once. Either way the target is recorded as failed for that document.

The converge step gets an :class:`~agent.workload.Outcome` whose ``exec_argv`` tells the
daemon to hand over; nothing here imports the converge step.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.board import Board
from agent.installed import Installed
from agent.layout import WorkloadLayout
from agent.ledger import FailedTarget, Ledger, replay_failure
from agent.prove import judge_version_probe
from agent.runtimes import runtime_for
from agent.selfinstall import DEFAULT_NAME, SelfInfo, who_am_i
from agent.stage import stage
from agent.state import StateDir, read_json, write_json
from agent.workload import Outcome, Workload

__all__ = ["DEFAULT_NAME", "MAX_STARTS", "SelfUpdate", "confirm", "on_start", "who_am_i"]

log = logging.getLogger(__name__)

MAX_STARTS = 3


def journal_path(state: StateDir) -> Path:
    return state.root / "self-update.json"


def read_journal(state: StateDir) -> dict[str, Any] | None:
    doc = read_json(journal_path(state))
    return doc if isinstance(doc, dict) else None


def exec_argv(layout: WorkloadLayout, version: str, program: str) -> list[str]:
    """Run ``version``'s program with the arguments this agent was started with."""
    return [str(Path(os.path.realpath(layout.version_dir(version))) / program), *sys.argv[1:]]


def _give_up(state: StateDir, layout: WorkloadLayout, journal: dict[str, Any], why: str) -> str:
    """Flip back to the version before the update and remember the target as failed."""
    back = journal.get("from")
    if back and layout.is_complete(str(back)) and layout.current_version() != back:
        layout.flip_back(str(back), journal.get("fromPrevious"))
    message = f"self-update to {journal.get('to')} failed: {why}; back on {back}"
    Ledger(state).remember(
        str(journal["name"]),
        FailedTarget.from_json(
            {
                "version": journal.get("to"),
                "sha256": journal.get("sha256"),
                "docKey": journal.get("docKey"),
                "phase": "Failed",
                "message": message,
            }
        ),
    )
    journal_path(state).unlink(missing_ok=True)
    return message


def on_start(install_root: Path, state: StateDir) -> tuple[str, str] | None:
    """First thing ``run`` does: (phase, note) for the report, or None when no self-update is
    in flight. May exec the previous version (a target that keeps failing to start)."""
    journal = read_journal(state)
    if journal is None:
        return None
    me = who_am_i(install_root)
    name = str(journal.get("name"))
    layout = WorkloadLayout(install_root, name)
    target = str(journal.get("to"))
    if me.name != name or me.version != target or __version__ != target:
        why = f"the agent that started is {me.version or __version__}, not {target}"
        return "Failed", _give_up(state, layout, journal, why)
    starts = int(journal.get("starts", 0)) + 1
    if starts > MAX_STARTS:
        message = _give_up(
            state, layout, journal, f"it did not run steadily in {MAX_STARTS} starts"
        )
        back = journal.get("from")
        if back and layout.is_complete(str(back)):
            log.error("%s: starting %s", message, back)
            argv = exec_argv(layout, str(back), str(journal.get("program")))
            logging.shutdown()
            os.execv(argv[0], argv)
        return "Failed", message
    journal["starts"] = starts
    write_json(journal_path(state), journal)
    return "Restarting", f"self-update to {target}: start {starts} of {MAX_STARTS}, confirming"


def confirm(state: StateDir, install_root: Path) -> str | None:
    """The new agent has run steadily: the update is done (None: nothing to confirm)."""
    journal = read_journal(state)
    if journal is None:
        return None
    me = who_am_i(install_root)
    if me.version != journal.get("to"):
        return None
    journal_path(state).unlink(missing_ok=True)
    return f"self-update from {journal.get('from')} to {journal.get('to')} confirmed"


@dataclass(frozen=True)
class SelfUpdate:
    """The converge step for the workload that is this agent."""

    installed: Installed
    board: Board
    ledger: Ledger
    me: SelfInfo

    def converge(self, w: Workload, key: str, failed: FailedTarget | None) -> Outcome:
        """Stage, preflight, flip; the outcome asks the daemon to hand over by exec."""
        name, version = w.name, w.version
        layout = self.installed.layout(name)
        if failed and failed.is_target(version, w.artifact.sha256, key):
            return replay_failure(self.board, name, failed, version)
        self.board.set(name, desired_version=version)
        if self.me.version == version:
            return Outcome(True, "Healthy", f"the agent runs {version}", {})
        layout.clean_leftovers()
        timings: dict[str, float] = {"received": time.time()}
        stage(w, self.installed, self.board, timings)
        probe = runtime_for(w.doc).probe_version(
            w.doc, self.installed.version_dir(name, version), 30.0
        )
        verdict = judge_version_probe(version, probe)
        if not probe.configured or not verdict.ok:
            why = verdict.reason if probe.configured else "no versionProbe to preflight it"
            message = f"self-update to {version} refused: {why}"
            self.ledger.remember(
                name, FailedTarget(version, w.artifact.sha256, key, "Failed", message)
            )
            self.board.set(name, phase="Failed", message=message)
            return Outcome(False, "Failed", message, timings)
        current = self.me.version or layout.current_version()
        write_json(
            journal_path(self.installed.state),
            {
                "name": name,
                "to": version,
                "from": current,
                "fromPrevious": layout.previous_version(),
                "sha256": w.artifact.sha256,
                "docKey": key,
                "program": w.program,
                "starts": 0,
            },
        )
        if current and current != version:
            layout.flip(layout.previous, current)
        layout.flip(layout.current, version)
        self.board.set(name, phase="Restarting", message=f"handing over to {version}")
        log.info("self-update: handing over from %s to %s", current, version)
        argv = exec_argv(layout, version, w.program)
        return Outcome(True, "Restarting", f"handing over to {version}", timings, tuple(argv))
