"""`fleetkeeper audit`: who approved what, what was applied or refused, each rollout step.

Reads the reconciler's append-only audit log through ``GET /v1/audit``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from reconciler.commands.status import add_server_args, make_console, quiet_http_logs
from reconciler.errors import FleetkeeperError
from reconciler.views.client import AdminClient, read_token
from reconciler.views.tables import audit_table
from reconciler.views.timefmt import parse_since


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "audit",
        help="the audit log: approvals, applied/refused revisions, rollout steps, halts",
        description="Print the reconciler's audit log, oldest first.",
    )
    add_server_args(p)
    p.add_argument(
        "--since",
        help="only events after this: a duration (10m, 2h, 1d, 1w), a unix time or an ISO date",
    )
    p.add_argument(
        "--limit", type=int, default=1000, help="the newest this many events (default 1000)"
    )
    p.add_argument(
        "--kind", help="only these event kinds, comma-separated (e.g. approved,refused,halted)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    quiet_http_logs()
    since = None
    if args.since:
        try:
            since = parse_since(args.since, time.time())
        except ValueError as exc:
            raise FleetkeeperError(str(exc)) from exc
    token = read_token(args.token_file)
    with AdminClient(args.server, token) as client:
        events = client.recent_audit(since=since, limit=args.limit)
    if args.kind:
        kinds = {k.strip() for k in args.kind.split(",") if k.strip()}
        events = [e for e in events if e.get("kind") in kinds]
    if args.format == "json":
        sys.stdout.write(json.dumps({"events": events}, sort_keys=True) + "\n")
    else:
        make_console().print(audit_table(events))
    return 0
