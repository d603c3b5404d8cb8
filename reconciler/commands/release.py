"""`fleetkeeper release new AGENT VERSION --artifact PLATFORM=URL[@FILE] ...`.

Writes ``releases/AGENT/VERSION.yaml``: each artifact's SHA-256 and size computed from the
local FILE, or by streaming URL when no FILE is given; every other field copied from the
previous release of AGENT. The fleet is validated with the new file first; nothing is
written when it has errors (exit 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from reconciler.authoring import digest, documents
from reconciler.authoring.fleetfiles import AuthoringError, add_file, fleet_root, versions
from reconciler.validate.violations import render_text


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "release", help="write a new release file (digests computed, fields copied)"
    )
    rsub = p.add_subparsers(dest="release_command", required=True, metavar="ACTION")
    new = rsub.add_parser(
        "new",
        help="write releases/AGENT/VERSION.yaml from the previous release",
        description="Write releases/AGENT/VERSION.yaml: sha256 and size of each artifact "
        "from its local FILE or by downloading URL; run, health, targets, rollout... copied "
        "from the previous release of AGENT. Validated with the whole fleet before it is "
        "written; exit 1 (nothing written) when invalid.",
    )
    new.add_argument("agent", metavar="AGENT")
    new.add_argument("version", metavar="VERSION")
    new.add_argument(
        "--artifact",
        action="append",
        required=True,
        metavar="PLATFORM=URL[@FILE]",
        help="one per platform, e.g. linux/amd64=https://host/a.tar.gz@dist/a.tar.gz "
        "(without @FILE the URL is downloaded to hash it)",
    )
    new.add_argument("--repo", type=Path, metavar="DIR", help="the fleet repo (default: here)")
    new.add_argument("--force", action="store_true", help="replace an existing file")
    new.set_defaults(func=run_new)


def parse_artifact(value: str) -> tuple[str, str, Path | None]:
    platform, eq, rest = value.partition("=")
    if not eq or not platform or not rest:
        raise AuthoringError(f"--artifact {value!r}: expected PLATFORM=URL[@FILE]")
    url, at, file = rest.rpartition("@")
    if not at:
        return platform, rest, None
    path = Path(file).expanduser()
    if not path.is_file():
        raise AuthoringError(f"--artifact {value!r}: {file}: no such file")
    return platform, url, path


def artifact_doc(value: str, console: Console) -> dict[str, Any]:
    platform, url, path = parse_artifact(value)
    found = digest.of_file(path) if path is not None else digest.of_url(url, console=console)
    where = path if path is not None else url
    console.print(f"{platform}: sha256 {found.sha256}, {found.size} bytes ({where})")
    return {"platform": platform, "url": url, "sha256": found.sha256, "size": found.size}


def run_new(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    root = fleet_root(args.repo)
    folder = f"releases/{args.agent}"
    existing = versions(root, folder)
    base = documents.previous_version(
        {v: d for v, d in existing.items() if v != args.version}, args.version
    )
    if base is None:
        raise AuthoringError(
            f"{root / folder}: no earlier release of {args.agent} to copy run, health and "
            "targets from; write the first one by hand (see example-fleet-repo/releases/)"
        )
    artifacts = [artifact_doc(a, console) for a in args.artifact]
    doc = documents.new_release(existing[base], args.agent, args.version, artifacts)
    rel = f"{folder}/{args.version}.yaml"
    origin = f"Written by `fleetkeeper release new` from {base}.yaml"
    report = add_file(root, rel, documents.to_yaml(doc, origin), force=args.force)
    sys.stdout.write(render_text(report.with_prefix(f"{root}/")))
    if not report.ok:
        print(f"fleetkeeper release: {rel} not written: fix the errors above", file=sys.stderr)
        return 1
    print(f"fleetkeeper release: wrote {root / rel} (copied from {base}.yaml)", file=sys.stderr)
    return 0
