"""``fleetkeeper`` command line: one parser, one error handler.

Each subcommand lives in ``reconciler/commands/<name>.py`` and exposes
``register(subparsers)`` (adds its parser, sets ``func``) and a ``run(args) -> int``.
Exit codes: 0 ok, 1 the user's input is wrong (invalid file, halted release),
2 usage, 3 a bug (with a pointer to the log), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fleetkeeper_common.cli import run_command
from reconciler import __version__
from reconciler.errors import FleetkeeperError
from reconciler.logs import setup_logging

# name -> one-line help. Only the chosen command's module is imported: the git hooks
# run `validate` on every commit and should not pay for the server's imports.
COMMANDS = {
    "validate": "validate fleet files (schema, YAML pitfalls, cross-file rules)",
    "plan": "the approved revision and the desired state per node, computed offline",
    "serve": "run the reconciler and its HTTP API",
    "status": "fleet and rollout status from a running reconciler",
    "audit": "the audit log of a running reconciler",
    "token": "join tokens for new nodes: create, list, revoke",
    "node": "operator actions on a node's identity (reset)",
    "rollout": "steer a rollout: pause, resume, retry, promote, skip-node (audited)",
    "store": "the reconciler's database: migrate SQLite to PostgreSQL",
    "hooks": "install git hooks (pre-commit, pre-receive) into a fleet repo",
    "schema": "export the JSON Schemas for editors and other validators",
    "release": "write a new release file (digests computed, fields copied from the last one)",
    "model": "write a new model file (digest and GGUF facts read from the file)",
    "secret": "age-encrypted secrets in the fleet repo: encrypt, check",
}


def _chosen(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line, if any (skipping global options)."""
    for arg in argv:
        if arg in COMMANDS:
            return arg
        if not arg.startswith("-") and arg not in ("text", "json") and not arg.isupper():
            return None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetkeeper", description="GitOps reconciler for fleets of self-hosted agents."
    )
    parser.add_argument("--version", action="version", version=f"fleetkeeper {__version__}")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log line format"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _chosen(sys.argv[1:] if argv is None else argv)
    for name, summary in COMMANDS.items():
        if chosen is None or name == chosen:
            importlib.import_module(f"reconciler.commands.{name}").register(sub)
        else:
            sub.add_parser(name, help=summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    return run_command("fleetkeeper", lambda: int(args.func(args)), (FleetkeeperError,))


if __name__ == "__main__":
    sys.exit(main())
