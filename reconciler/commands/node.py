"""`fleetkeeper node reset NAME`: free a node name whose credential is lost or stolen.

Re-registering a registered name needs that node's current credential; when the node lost
it (reinstalled disk) or it may be in the wrong hands, an operator resets the name. The
old credential stops working at once and the name can register again with a join token
(or the bootstrap token, for a name declared in nodes/). The reset is audited.
"""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.commands.status import add_server_args, quiet_http_logs
from reconciler.views.client import AdminClient, read_token


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "node", help="operator actions on a node's identity (reset)"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    reset = actions.add_parser(
        "reset",
        help="revoke a node's credential so the name can register again (audited)",
    )
    add_server_args(reset)
    reset.add_argument("name", help="the node name")
    reset.set_defaults(func=run_reset)


def run_reset(args: argparse.Namespace) -> int:
    quiet_http_logs()
    with AdminClient(args.server, read_token(args.token_file)) as client:
        client.reset_node(args.name)
    print(
        f"node {args.name} reset: its credential no longer works; register it again with a "
        f"join token (fleetkeeper token create --node {args.name})"
    )
    return 0
