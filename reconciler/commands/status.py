"""`fleetkeeper status`: the fleet at a glance, from the reconciler's ``GET /v1/fleet``.

Exit code for scripts: 0 every release Succeeded (or Superseded), 1 any Halted, Invalid or
Unapproved, 4 still rolling out (Pending/Progressing/Soaking).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live

from reconciler.views.client import DEFAULT_SERVER, ENV_SERVER, AdminClient, read_token
from reconciler.views.tables import fleet_view
from reconciler.views.view import exit_code

PIPE_WIDTH = 160  # wide enough that tables piped to a file or CI log do not wrap


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status",
        help="fleet table: nodes, versions, rollouts (exit 0 done, 1 failed, 4 rolling out)",
        description="Show nodes (health, last seen, running vs desired versions) and "
        "releases (approval, phase, batch, soak time left, halted reason). Exit code: "
        "0 every release Succeeded, 1 any Halted/Invalid/Unapproved, 4 still rolling out.",
    )
    add_server_args(p)
    p.add_argument("--watch", action="store_true", help="redraw live until Ctrl-C")
    p.add_argument(
        "--interval", type=float, default=2.0, help="seconds between redraws with --watch"
    )
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        default=os.environ.get(ENV_SERVER, DEFAULT_SERVER),
        help=f"reconciler URL (default ${ENV_SERVER} or {DEFAULT_SERVER})",
    )
    p.add_argument(
        "--token-file", help="file holding the admin token (default: $FLEETKEEPER_TOKEN)"
    )


def make_console() -> Console:
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(width=max(PIPE_WIDTH, console.width))
    return console


def quiet_http_logs() -> None:
    """httpx logs every request at INFO: noise on a status screen (kept at WARNING)."""
    logging.getLogger("httpx").setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    quiet_http_logs()
    token = read_token(args.token_file)
    with AdminClient(args.server, token) as client:
        if args.format == "json":
            return _json(client, args.watch, args.interval)
        console = make_console()
        if not args.watch:
            status = client.fleet()
            console.print(fleet_view(status, time.time()))
            return exit_code(status)
        return _watch(client, console, args.interval)


def _json(client: AdminClient, watch: bool, interval: float) -> int:
    while True:
        status = client.fleet()
        sys.stdout.write(json.dumps(status, sort_keys=True) + "\n")
        sys.stdout.flush()
        if not watch:
            return exit_code(status)
        time.sleep(interval)


def _watch(client: AdminClient, console: Console, interval: float) -> int:
    status = client.fleet()
    with Live(fleet_view(status, time.time()), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                status = client.fleet()
                live.update(fleet_view(status, time.time()), refresh=True)
        except KeyboardInterrupt:
            pass
    return exit_code(status)
