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
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.layout import WorkloadLayout
from agent.prove import judge_probe
from agent.runtimes import runtime_for
from agent.selfinstall import agent_location, managed_workload
from agent.state import StateDir, read_json, write_json

if TYPE_CHECKING:
    from agent.converge import Converger, Outcome

log = logging.getLogger(__name__)

MAX_STARTS = 3
DEFAULT_NAME = "fleetkeeper-agent"  # the conventional workload name of the agent itself


class SelfExec(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised by the converge step: the daemon must ``exec`` ``argv`` now."""

    def __init__(self, argv: list[str]) -> None:
        super().__init__(" ".join(argv))
        self.argv = argv


@dataclass(frozen=True)
class SelfInfo:
    name: str | None  # the workload name the agent is installed as (None: not managed)
    version: str | None  # the version directory the running agent's code lives in


def who_am_i(install_root: Path) -> SelfInfo:
    name = managed_workload(agent_location(), install_root)
    if name is None:
        return SelfInfo(None, None)
    return SelfInfo(name, WorkloadLayout(install_root, name).version_of_path(agent_location()))


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
        layout.flip(layout.current, str(back))
        prev = journal.get("fromPrevious")
        layout.flip(layout.previous, str(prev) if prev and layout.is_complete(prev) else None)
    message = f"self-update to {journal.get('to')} failed: {why}; back on {back}"
    failed = state.read_failed()
    failed[str(journal["name"])] = {
        "version": journal.get("to"),
        "sha256": journal.get("sha256"),
        "docKey": journal.get("docKey"),
        "phase": "Failed",
        "message": message,
    }
    state.write_failed(failed)
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


def converge_self(
    conv: Converger, w: Mapping[str, Any], key: str, entry: Mapping[str, Any] | None
) -> Outcome:
    """The desired workload is this agent: stage, preflight, flip, and hand over by exec."""
    # at call time: converge imports this module
    from agent.converge import Outcome, is_known_failure

    name, version = str(w["name"]), str(w["version"])
    sha = str(w["artifact"]["sha256"])
    layout = conv.layout(name)
    if entry and is_known_failure(entry, version, sha, key):
        return conv.replay_failure(name, entry, version)
    conv.board.set(name, desired_version=version)
    if conv.me.version == version:
        return Outcome(True, "Healthy", f"the agent runs {version}", {})
    layout.clean_leftovers()
    timings: dict[str, float] = {"received": time.time()}
    conv.stage(w, layout, timings)
    vdir = Path(os.path.realpath(layout.version_dir(version)))
    runtime = runtime_for(w)
    probe = runtime.probe_version(w, vdir, 30.0)
    verdict = judge_probe(
        target=version,
        configured=probe.configured,
        ok=probe.ok,
        output=probe.output,
        message=probe.message,
    )
    if not probe.configured or not verdict.ok:
        why = verdict.reason if probe.configured else "no versionProbe to preflight it"
        message = f"self-update to {version} refused: {why}"
        conv.remember_failed(w, key, "Failed", message)
        conv.board.set(name, phase="Failed", message=message)
        return Outcome(False, "Failed", message, timings)
    program = str((w.get("run") or {}).get("command", ["bin/fleetkeeper-agent"])[0])
    current = conv.me.version or layout.current_version()
    write_json(
        journal_path(conv.state),
        {
            "name": name,
            "to": version,
            "from": current,
            "fromPrevious": layout.previous_version(),
            "sha256": sha,
            "docKey": key,
            "program": program,
            "starts": 0,
        },
    )
    if current and current != version:
        layout.flip(layout.previous, current)
    layout.flip(layout.current, version)
    conv.board.set(name, phase="Restarting", message=f"handing over to {version}")
    log.info("self-update: handing over from %s to %s", current, version)
    raise SelfExec(exec_argv(layout, version, program))
