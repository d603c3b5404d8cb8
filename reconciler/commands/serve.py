"""``fleetkeeper serve --config FILE``: the reconcile loop and the HTTP API in one process.

Prints one line ``listening on http://HOST:PORT`` on stdout once the socket is bound
(useful with ``listen: 127.0.0.1:0``); logs go to stderr. SIGTERM stops it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler.config import load_config


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
    from reconciler import service  # uvicorn and the loop load only for this command

    config = load_config(args.config)
    service.run(config, on_listening=_announce)
    return 0
