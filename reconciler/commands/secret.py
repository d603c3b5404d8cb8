"""`fleetkeeper secret encrypt NAME` and `fleetkeeper secret check` (issue 17).

``encrypt`` reads the plain text from stdin and writes ``secrets/NAME.age`` (age,
ASCII-armored) encrypted to the ``ageRecipient`` of every node the release targets (or the
named nodes, or the nodes of the named roles) and to fleet.yaml's
``secrets.operatorRecipients``, with ``secrets/NAME.recipients`` listing them. The plain
text is held in memory only and never printed. ``check`` judges every release's secrets
against the nodes it targets (``fleetkeeper validate`` runs the same rules).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from fleetkeeper_common.age import AgeError, encrypt
from reconciler.commands.validate import find_root, worktree_entries
from reconciler.errors import FleetkeeperError
from reconciler.secret_files import (
    audience,
    recipients_path,
    render_recipients,
    secret_path,
)
from reconciler.spec import build_spec
from reconciler.validate import (
    Report,
    RuleContext,
    check_file,
    is_fleet_file,
    render_text,
    secret_rules,
    validate_files,
)
from reconciler.validate.violations import sort_key


class SecretCommandError(FleetkeeperError):
    reason = "SecretRefused"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "secret", help="age-encrypted secrets in the fleet repo: encrypt, check"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    enc = actions.add_parser(
        "encrypt",
        help="encrypt stdin to secrets/NAME.age for the nodes that need it",
        description="Read the plain text from stdin; write secrets/NAME.age encrypted to "
        "every chosen node's ageRecipient and fleet.yaml's secrets.operatorRecipients, and "
        "secrets/NAME.recipients listing them.",
    )
    enc.add_argument("name", help="the secret's path below secrets/, e.g. coding-agent/api-key")
    whom = enc.add_mutually_exclusive_group(required=True)
    whom.add_argument("--for-release", metavar="AGENT", help="the nodes AGENT's release targets")
    whom.add_argument("--nodes", metavar="N,...", help="these nodes")
    whom.add_argument("--roles", metavar="R,...", help="the nodes with one of these roles")
    enc.add_argument("--repo", metavar="DIR", help="the fleet repo (default: found from here)")
    enc.set_defaults(func=run_encrypt)
    chk = actions.add_parser(
        "check", help="refuse releases whose targeted nodes are not all recipients"
    )
    chk.add_argument("--repo", metavar="DIR", help="the fleet repo (default: found from here)")
    chk.set_defaults(func=run_check)


def write_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (a half-written age file would be refused anyway)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SecretCommandError(f"cannot write {path}: {exc.strerror}") from exc


def _root(repo: str | None) -> Path:
    return find_root(Path(repo) if repo else Path.cwd())


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run_encrypt(args: argparse.Namespace) -> int:
    root = _root(args.repo)
    name = str(args.name).removeprefix("secrets/").removesuffix(".age")
    if not name or ".." in name.split("/") or name.startswith("/"):
        raise SecretCommandError(f"secret name {args.name!r}: give a path below secrets/")
    found = worktree_entries(root)
    # the cross-file rules may fail (the release names this very secret, not yet written):
    # the documents that passed their own checks are enough to know whom to encrypt to
    report = validate_files(found.files)
    spec = build_spec(report.documents)
    try:
        who = audience(
            spec,
            release=args.for_release,
            nodes=_split(args.nodes),
            roles=_split(args.roles),
        )
    except KeyError as exc:
        # a file that failed its own checks is not in the spec: say why
        invalid = [str(v) for v in report.errors if v.path not in report.documents][:3]
        why = "; invalid files: " + "; ".join(invalid) if invalid else ""
        raise SecretCommandError(f"{exc.args[0]}{why}") from exc
    if who.without:
        raise SecretCommandError(
            f"node(s) {', '.join(who.without)} have no ageRecipient in their node file: run "
            "`fleetkeeper-agent identity --config FILE` on each and add ageRecipient: age1... "
            "to nodes/<node>.yaml"
        )
    if not who.nodes:
        raise SecretCommandError("no node is chosen: nothing to encrypt to")
    plain = sys.stdin.buffer.read()
    if not plain:
        raise SecretCommandError("no plain text on stdin")
    try:
        cipher = encrypt(plain, (r.key for r in who.recipients))
    except AgeError as exc:
        raise SecretCommandError(str(exc)) from exc
    age_rel = secret_path(name)
    write_file(root / age_rel, cipher)
    write_file(root / recipients_path(age_rel), render_recipients(who.recipients).encode())
    listed = ", ".join(r.who for r in who.recipients)
    print(f"wrote {age_rel} encrypted to {len(who.recipients)} recipient(s): {listed}")
    print(f"wrote {recipients_path(age_rel)}; commit both through a pull request")
    return 0


def run_check(args: argparse.Namespace) -> int:
    root = _root(args.repo)
    found = worktree_entries(root)
    passed = {}
    checked = []
    for path, data in sorted(found.files.items()):
        if is_fleet_file(path):
            checked.append(path)
            loaded, problems = check_file(path, data)
            if loaded is not None and not any(v.severity == "error" for v in problems):
                passed[path] = loaded
    ctx = RuleContext.build(passed, checked)
    found_ = [*secret_rules.recipients(ctx), *secret_rules.secret_files(found.files)(ctx)]
    report = Report(violations=tuple(sorted(found_, key=sort_key)), checked=tuple(checked))
    sys.stdout.write(render_text(report))
    with_secrets = sum(1 for d in ctx.spec.deployables if d.secrets)
    if report.ok:
        print(f"fleetkeeper secret check: {with_secrets} release(s) with secrets: ok")
        return 0
    print(f"fleetkeeper secret check: {len(report.errors)} error(s) in {root}", file=sys.stderr)
    return 1
