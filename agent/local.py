"""Commands that act on the node from the command line: rollback and status.

``rollback`` goes through the running daemon when there is one (a request file in the
state directory, answered by the daemon's converge thread), else acts directly under the
daemon's lock. ``status`` only observes.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from agent.board import Board
from agent.config import BOOTSTRAP_TOKEN_ENV, AgentConfig
from agent.errors import AgentError
from agent.report import decide_phase
from agent.state import StateDir, file_lock, read_json, write_json
from agent.wiring import make_converger, make_observer, make_supervisor


def request_rollback(cfg: AgentConfig, name: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Roll ``name`` back: through the running daemon when there is one (request file in
    the state directory), else directly under the daemon's lock."""
    state = StateDir(cfg.state_dir)
    state.ensure()
    with file_lock(state.lock_file, blocking=False) as held:
        if not held:
            return _ask_daemon(state, name, timeout)
        board = Board()
        sup = make_supervisor(cfg, state)
        conv = make_converger(cfg, state, sup, board)
        doc, _ = state.read_desired()
        conv.adopt_all(doc)
        try:
            return True, conv.rollback(name, doc)
        except AgentError as exc:
            return False, str(exc)


def _ask_daemon(state: StateDir, name: str, timeout: float) -> tuple[bool, str]:
    rid = uuid.uuid4().hex[:12]
    req = state.requests_dir / f"{rid}.request.json"
    write_json(req, {"action": "rollback", "name": name})
    result_path = state.requests_dir / f"{rid}.result.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = read_json(result_path)
        if isinstance(body, dict):
            result_path.unlink(missing_ok=True)
            return bool(body.get("ok")), str(body.get("message"))
        time.sleep(0.1)
    req.unlink(missing_ok=True)
    return False, f"the running agent did not answer within {timeout:.0f}s"


def credential(cfg: AgentConfig) -> dict[str, Any]:
    """Which credential the agent holds, never the secret itself.

    ``node-credential``: registered, ``stateDir/node.token`` opens this node's endpoints
    (the join token, if still present, is no longer needed). ``join-token``: not registered
    yet; the token will be spent on the first registration. ``none``: it cannot register.
    """
    state = StateDir(cfg.state_dir)
    try:
        join = cfg.bootstrap_token()
    except AgentError:
        join = None
    source = (
        BOOTSTRAP_TOKEN_ENV
        if os.environ.get(BOOTSTRAP_TOKEN_ENV)
        else str(cfg.bootstrap_token_file)
        if cfg.bootstrap_token_file is not None
        else None
    )
    if state.read_token():
        out: dict[str, Any] = {"kind": "node-credential", "file": str(state.token_file)}
        if join:
            out["joinTokenStillPresent"] = source
        return out
    if join:
        return {"kind": "join-token", "source": source}
    return {"kind": "none"}


def describe_credential(cred: dict[str, Any]) -> str:
    """One line for people about ``credential``'s answer."""
    kind = cred.get("kind")
    if kind == "node-credential":
        line = f"credential: node credential ({cred['file']})"
        if cred.get("joinTokenStillPresent"):
            line += f"; the join token in {cred['joinTokenStillPresent']} is no longer needed"
        return line
    if kind == "join-token":
        return f"credential: join token from {cred['source']} (not registered yet)"
    return "credential: none (no node credential and no join token: it cannot register)"


def local_status(cfg: AgentConfig) -> list[dict[str, Any]]:
    """What runs locally, observed now (for ``fleetkeeper-agent status``)."""
    state = StateDir(cfg.state_dir)
    doc, _ = state.read_desired()
    last = read_json(state.status_file)
    last_phase: dict[str, Any] = {}
    if isinstance(last, dict):
        for e in (last.get("report") or {}).get("workloads", []):
            last_phase[e["name"]] = e
    sup, conv = make_observer(cfg, state)
    rows = []
    for w in (doc or {}).get("workloads", []):
        name = str(w["name"])
        sup.watch(name)
        observed = conv.observe(w)
        reported = last_phase.get(name, {})
        rows.append(
            {
                "name": name,
                "desired": observed.desired_version,
                "running": observed.version,
                "current": Path(observed.current).name if observed.current else None,
                "pid": observed.pid,
                "healthy": observed.healthy,
                "phase": reported.get("phase") or decide_phase(None, observed),
                "message": reported.get("message") or observed.health_message,
            }
        )
    return rows


def desired_judgement(cfg: AgentConfig) -> dict[str, Any]:
    """How the running agent last judged its desired state (the ``desired`` block of its
    last report), for ``fleetkeeper-agent status``."""
    last = read_json(StateDir(cfg.state_dir).status_file)
    report = last.get("report") if isinstance(last, dict) else None
    judged = report.get("desired") if isinstance(report, dict) else None
    return dict(judged) if isinstance(judged, dict) else {}
