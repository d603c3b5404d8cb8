"""``fleetkeeper serve --config FILE``: the reconcile loop and the HTTP API in one process.

Prints one line ``listening on http://HOST:PORT`` on stdout once the socket is bound
(useful with ``listen: 127.0.0.1:0``); logs go to stderr. SIGTERM stops it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from reconciler.config import load_config
from reconciler.errors import FleetkeeperError

# What the ``server`` extra brings (import names): the base install leaves them out so
# that edge nodes and pre-commit hook environments get no web server.
SERVER_MODULES = ("starlette", "uvicorn", "watchfiles", "prometheus_client", "httptools")
SERVER_EXTRA_HINT = "pip install 'fleetkeeper[server]'"


class ServerExtraMissing(FleetkeeperError):
    reason = "ServerExtraMissing"


def check_server_extra() -> None:
    """Fail with the exact install command when the ``server`` extra is not installed."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ServerExtraMissing(
            f"serve needs the server extra, which is not installed (missing: "
            f"{', '.join(missing)}); install it with: {SERVER_EXTRA_HINT}"
        )


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="run the reconciler and its HTTP API (until SIGTERM)"
    )
    p.add_argument("--config", required=True, type=Path, help="reconciler config file (YAML)")
    p.set_defaults(func=run)


def _announce(url: str) -> None:
    sys.stdout.write(f"listening on {url}\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    check_server_extra()
    from reconciler import service  # uvicorn and the loop load only for this command

    config = load_config(args.config)
    service.run(config, on_listening=_announce)
    return 0
