"""`fleetkeeper schema export DIR`: the JSON Schemas as self-contained files for other tools.

The packaged schemas share their definitions through ``urn:fleetkeeper:schema:common``,
which only fleetkeeper's own registry resolves. The exported copies have that common part
inlined and keep their stable ``$id``, so check-jsonschema, VS Code's YAML extension or any
JSON Schema validator can use them with no fleetkeeper code and no network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import schema as schemas
from reconciler.errors import FleetkeeperError

EXPORTED = tuple(n for n in schemas.NAMES if n != "common")  # common is inlined in each


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "schema", help="export the JSON Schemas for editors and other validators"
    )
    ssub = p.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    exp = ssub.add_parser(
        "export",
        help="write self-contained <name>.schema.json files into DIR",
        description="Write every fleetkeeper JSON Schema into DIR as a self-contained file "
        "(no $ref leaves the file), e.g. for check-jsonschema --schemafile or an editor's "
        "YAML extension. Existing files of the same names are replaced.",
    )
    exp.add_argument("dir", type=Path, metavar="DIR")
    exp.set_defaults(func=run_export)


def export(dest: Path) -> list[Path]:
    """Write the bundled schemas into ``dest`` (created if missing); the paths written.
    Each file is replaced atomically, so an editor never reads half a schema."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FleetkeeperError(f"cannot create {dest}: {exc.strerror}") from exc
    written = []
    for name in EXPORTED:
        target = dest / f"{name}.schema.json"
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_text(json.dumps(schemas.bundled(name), indent=2) + "\n", "utf-8")
            os.replace(tmp, target)
        except OSError as exc:
            raise FleetkeeperError(f"cannot write {target}: {exc.strerror}") from exc
        written.append(target)
    return written


def run_export(args: argparse.Namespace) -> int:
    for path in export(args.dir):
        print(path)
    print(f"fleetkeeper schema: wrote {len(EXPORTED)} schemas to {args.dir}", file=sys.stderr)
    return 0
