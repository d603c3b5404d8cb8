"""`fleetkeeper hooks install --repo PATH [--pre-receive] [--force]` and the hook entry
point `fleetkeeper hooks run pre-receive` (what an installed pre-receive hook calls)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from reconciler import githooks


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "hooks", help="install git hooks that validate fleet files"
    )
    hsub = p.add_subparsers(dest="hooks_command", required=True, metavar="ACTION")
    inst = hsub.add_parser(
        "install",
        help="install a pre-commit hook (or, with --pre-receive, a server-side hook)",
        description="Write a git hook that runs `fleetkeeper validate` with this "
        "fleetkeeper's own interpreter (by absolute path).",
    )
    inst.add_argument("--repo", default=".", metavar="PATH", help="the git repository")
    inst.add_argument(
        "--pre-receive",
        action="store_true",
        help="install a pre-receive hook that rejects pushes whose new tip is invalid "
        "(for the bare repository people push to)",
    )
    inst.add_argument("--force", action="store_true", help="move an existing foreign hook aside")
    inst.add_argument(
        "--fleet-dir",
        default="",
        metavar="DIR",
        help="with --pre-receive: the folder of the pushed trees that holds the fleet "
        "(default: the root)",
    )
    inst.set_defaults(func=run_install)
    run_p = hsub.add_parser("run", help="(called by installed hooks)")
    run_p.add_argument("hook", choices=("pre-receive",))
    run_p.add_argument("--fleet-dir", default="", metavar="DIR")
    run_p.set_defaults(func=run_hook)


def run_install(args: argparse.Namespace) -> int:
    repo = Path(args.repo)
    if not repo.is_dir():
        print(f"fleetkeeper hooks: {repo}: no such folder", file=sys.stderr)
        return 2
    kind: githooks.HookKind = "pre-receive" if args.pre_receive else "pre-commit"
    if args.fleet_dir and not args.pre_receive:
        print(
            "fleetkeeper hooks: --fleet-dir is for --pre-receive; for a pre-commit hook "
            "pass the fleet's folder as --repo",
            file=sys.stderr,
        )
        return 2
    path = githooks.install(repo, kind, force=args.force, fleet_dir=args.fleet_dir)
    print(f"installed {kind} hook: {path}")
    return 0


def run_hook(args: argparse.Namespace) -> int:
    updates = [githooks.RefUpdate.parse(line) for line in sys.stdin if line.strip()]
    return githooks.pre_receive(Path.cwd(), updates, sys.stderr, fleet_dir=args.fleet_dir)
