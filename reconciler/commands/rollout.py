"""`fleetkeeper rollout pause|resume|retry|promote|skip-node NAME`: steer a rollout.

NAME is the agent or model name; the command acts on its current rollout through the
reconciler's admin API (``POST /v1/rollouts/{name}/{action}``). ``--reason`` is required:
every control is an audit event with who and why, and a pause shows in ``status``.
"""

from __future__ import annotations

import argparse
import getpass
from typing import Any

from reconciler.commands.status import add_server_args, quiet_http_logs
from reconciler.errors import ConfigError
from reconciler.views.client import AdminClient, read_token

HELP = {
    "pause": "give the target to no further node (in-flight nodes finish); survives new commits",
    "resume": "undo a pause",
    "retry": "a halted rollout tries the nodes that failed again, without a new commit",
    "promote": "end the soak of the running batch now",
    "skip-node": "leave a dead node behind in this rollout (recorded; status shows it)",
}
SAID = {
    "pause": "paused",
    "resume": "resumed",
    "retry": "retrying",
    "promote": "promoted (soak ended)",
    "skip-node": "skipping",
}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "rollout",
        help="steer a rollout: pause, resume, retry, promote, skip-node (audited)",
        description="Steer the current rollout of an agent or model. These never change "
        "what is approved: they only pause, resume, retry or speed up its rollout.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in HELP.items():
        a = actions.add_parser(action, help=text, description=text)
        add_server_args(a)
        a.add_argument("name", help="the agent or model name")
        if action == "skip-node":
            a.add_argument("node", help="the node to leave behind")
        a.add_argument(
            "--reason", required=True, help="why (required: kept in the audit log, shown in status)"
        )
        a.add_argument("--by", default=None, help="who asks (default: the local user name)")
        a.set_defaults(func=run)


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return None


def run(args: argparse.Namespace) -> int:
    quiet_http_logs()
    if not args.reason.strip():
        raise ConfigError("--reason must not be empty: say why (it is kept in the audit log)")
    node = getattr(args, "node", None)
    with AdminClient(args.server, read_token(args.token_file)) as client:
        doc = client.control(args.action, args.name, args.reason, node, args.by or _user())
    target = f" node {node} of" if node else ""
    print(
        f"{SAID[args.action]}{target} the rollout of {doc.get('name')} {doc.get('version')} "
        f"(control #{doc.get('seq')}): {args.reason}"
    )
    return 0
