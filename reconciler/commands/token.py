"""`fleetkeeper token create|list|revoke`: join tokens, the way a new node proves it may join.

Like Teleport's ``tctl tokens add`` and Tailscale's auth keys: a token is scoped (to one
node name, or to the roles and labels a node may have), single-use unless ``--uses`` says
otherwise, and expires (``--ttl``, default 1h). The reconciler keeps only its sha256 and
audits every use; the secret is printed once, by ``create``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.table import Table

from reconciler.commands.status import add_server_args, make_console, quiet_http_logs
from reconciler.errors import FleetkeeperError
from reconciler.views.client import AdminClient, read_token
from reconciler.views.timefmt import parse_duration


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "token",
        help="join tokens for new nodes: create, list, revoke",
        description="Join tokens let a node register (give it to the agent as "
        "bootstrapTokenFile). Scoped to one node (--node) or to roles/labels; single-use "
        "and expiring by default. Needs the admin token.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="print a new join token")
    add_server_args(create)
    create.add_argument("--node", help="only this node name may register with it")
    create.add_argument(
        "--roles", help="comma-separated roles the node may have (with --labels: the scope)"
    )
    create.add_argument(
        "--labels",
        help="comma-separated k=v labels: a node without a file may claim only these, "
        "a node with one must carry them",
        metavar="K=V,...",
    )
    create.add_argument("--uses", type=int, default=1, help="registrations allowed (default 1)")
    create.add_argument("--ttl", default="1h", help="lifetime: 30m, 1h, 7d ... (default 1h)")
    create.add_argument("--format", choices=("text", "json"), default="text")
    create.set_defaults(func=run_create)
    listing = actions.add_parser("list", help="the join tokens and their state (no secrets)")
    add_server_args(listing)
    listing.add_argument("--format", choices=("text", "json"), default="text")
    listing.set_defaults(func=run_list)
    revoke = actions.add_parser("revoke", help="revoke a join token by its id")
    add_server_args(revoke)
    revoke.add_argument("id", help="the token's id (from `fleetkeeper token list`)")
    revoke.set_defaults(func=run_revoke)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (i.strip() for i in text.split(",")):
        key, sep, value = item.partition("=")
        if not item:
            continue
        if not sep or not key.strip():
            raise FleetkeeperError(f"--labels {text!r}: expected k=v pairs, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def create_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``POST /v1/tokens`` body from the command line (checked again by the server)."""
    if args.node and (args.roles is not None or args.labels is not None):
        raise FleetkeeperError("--node cannot be combined with --roles/--labels: pick one scope")
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise FleetkeeperError(str(exc)) from exc
    if args.uses < 1:
        raise FleetkeeperError(f"--uses {args.uses}: expected 1 or more")
    body: dict[str, Any] = {"uses": args.uses, "ttlSeconds": ttl}
    if args.node:
        body["node"] = args.node
    if args.roles is not None:
        body["roles"] = sorted({r.strip() for r in args.roles.split(",") if r.strip()})
    if args.labels is not None:
        body["labels"] = _labels(args.labels)
    return body


def _client(args: argparse.Namespace) -> AdminClient:
    quiet_http_logs()
    return AdminClient(args.server, read_token(args.token_file))


def run_create(args: argparse.Namespace) -> int:
    body = create_request(args)
    with _client(args) as client:
        doc = client.create_token(body)
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
        return 0
    # the secret alone on stdout (scripts: TOKEN=$(fleetkeeper token create ...)),
    # what it allows on stderr
    sys.stdout.write(f"{doc['token']}\n")
    print(
        f"join token {doc['id']}: {_scope(doc)}, {doc['uses']} use(s), expires "
        f"{doc['expiresAt']}. Put it in the agent's bootstrapTokenFile; once the node has "
        "registered, the file can be removed.",
        file=sys.stderr,
    )
    return 0


def _scope(doc: dict[str, Any]) -> str:
    if doc.get("node"):
        return f"node {doc['node']}"
    parts = []
    if doc.get("roles") is not None:
        parts.append("roles " + (",".join(doc["roles"]) or "(none)"))
    if doc.get("labels") is not None:
        parts.append(
            "labels " + (",".join(f"{k}={v}" for k, v in doc["labels"].items()) or "(none)")
        )
    return " and ".join(parts) if parts else "nodes declared in nodes/"


def run_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        tokens = client.tokens()
    if args.format == "json":
        sys.stdout.write(json.dumps({"tokens": tokens}, sort_keys=True) + "\n")
        return 0
    table = Table(title="Join tokens", title_justify="left")
    for col in ("id", "state", "scope", "used", "expires (UTC)"):
        table.add_column(col, no_wrap=True)
    for t in tokens:
        table.add_row(
            str(t["id"]),
            str(t["state"]),
            _scope(t),
            f"{t['used']}/{t['uses']}",
            str(t["expiresAt"]),
        )
    if not tokens:
        table.add_row("(no tokens)", "", "", "", "")
    make_console().print(table)
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    with _client(args) as client:
        doc = client.revoke_token(args.id)
    print(f"join token {doc['id']} revoked ({doc['used']}/{doc['uses']} use(s) were made)")
    return 0
