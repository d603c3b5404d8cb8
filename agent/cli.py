"""``fleetkeeper-agent`` command line: run, rollback, status, identity.

Exit codes: 0 ok, 1 the user's input or a failed action, 2 usage, 3 a bug, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.config import load
from agent.errors import AgentError
from fleetkeeper_common.cli import run_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleetkeeper-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"fleetkeeper-agent {__version__}")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent: poll, converge, report")
    run.add_argument("--config", required=True, type=Path, help="agent config (YAML)")
    rb = sub.add_parser("rollback", help="flip a workload back to its previous version")
    rb.add_argument("name", help="workload name")
    rb.add_argument("--config", required=True, type=Path)
    st = sub.add_parser("status", help="show what runs on this node")
    st.add_argument("--config", required=True, type=Path)
    st.add_argument("--format", choices=["table", "json"], default="table")
    ident = sub.add_parser(
        "identity",
        help="print this node's age recipient (age1...), creating its identity when missing",
    )
    ident.add_argument("--config", required=True, type=Path)
    return p


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def _status(args: argparse.Namespace) -> int:
    from agent.keys import TOFU_WARNING
    from agent.local import credential, describe_credential, desired_judgement, local_status

    cfg = load(args.config)
    rows = local_status(cfg)
    cred = credential(cfg)
    judged = desired_judgement(cfg)
    if args.format == "json":
        doc = {"node": cfg.node, "credential": cred, "desired": judged, "workloads": rows}
        print(json.dumps(doc, indent=1))
        return 0
    if judged:
        print(f"desired state: {judged.get('phase')} (expires {judged.get('expiresAt') or '-'})")
        if judged.get("message"):
            print(f"  {judged['message']}")
    if cfg.trusted_keys is None:
        print(
            "WARNING: "
            + TOFU_WARNING.format(keyid="see the file", path=cfg.state_dir / "known_signing_keys")
        )
    if cfg.approvers is not None:
        pinned = [str(p) for p in (cfg.approvers.allowed_signers, cfg.approvers.gpg_keyring) if p]
        print(f"approvers: each release's signature is checked here ({', '.join(pinned)})")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fleetkeeper-agent: workloads on this node")
    for col in ("workload", "desired", "running", "current", "pid", "health", "phase", "message"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"],
            str(r["desired"] or "-"),
            str(r["running"] or "-"),
            str(r["current"] or "-"),
            str(r["pid"] or "-"),
            "healthy" if r["healthy"] else "unhealthy",
            str(r["phase"]),
            str(r["message"] or "")[:80],
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: do not squeeze the table into 80 columns
    console.print(table)
    console.print(f"node {cfg.node}: {describe_credential(cred)}", highlight=False)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # status is for people: only problems go to stderr.
    _setup_logging("WARNING" if args.command == "status" else args.log_level)
    return run_command("fleetkeeper-agent", lambda: _dispatch(args), (AgentError,))


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from agent.daemon import Daemon

        code = Daemon(load(args.config)).run()
        # Threads may still sit in a long-poll: leave without interpreter teardown
        # (every state write is already atomic and synced).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if args.command == "rollback":
        from agent.local import request_rollback

        ok, message = request_rollback(load(args.config), args.name)
        print(message)
        return 0 if ok else 1
    if args.command == "identity":
        from agent.identity import ensure_identity
        from agent.state import StateDir

        state = StateDir(load(args.config).state_dir)
        state.ensure()
        print(ensure_identity(state).recipient)
        return 0
    return _status(args)


if __name__ == "__main__":
    sys.exit(main())
