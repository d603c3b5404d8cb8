"""`fleetkeeper model new NAME VERSION --file model.gguf --url URL`.

Writes ``models/NAME/VERSION.yaml``: the artifact's SHA-256 and size from FILE, the GGUF
header's facts (parameters, quantization, context length, layers and KV heads) in a
``gguf:`` block, everything else copied from the previous version of NAME. Validated with
the whole fleet first, including the memory check (weights plus KV cache at
args.contextSize), whose estimate per targeted node is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from reconciler.authoring import digest, documents
from reconciler.authoring.fleetfiles import add_file, fleet_root, versions
from reconciler.authoring.gguf_header import read_facts
from reconciler.plan.select import inventory, target_nodes
from reconciler.spec import build_spec
from reconciler.validate.model_rules import GIB, memory_estimate
from reconciler.validate.violations import Report, render_text


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "model", help="write a new model file (digest and GGUF facts read from the file)"
    )
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    new = msub.add_parser(
        "new",
        help="write models/NAME/VERSION.yaml from a .gguf file",
        description="Write models/NAME/VERSION.yaml for a llama.cpp model: sha256 and size "
        "of FILE, its GGUF header's facts for the memory check, the rest copied from the "
        "previous version of NAME. Exit 1 (nothing written) when the fleet would be invalid.",
    )
    new.add_argument("name", metavar="NAME")
    new.add_argument("version", metavar="VERSION")
    new.add_argument("--file", type=Path, required=True, help="the .gguf file")
    new.add_argument("--url", required=True, help="where nodes download it from")
    new.add_argument("--platform", default="any", help="artifact platform (default: any)")
    new.add_argument("--repo", type=Path, metavar="DIR", help="the fleet repo (default: here)")
    new.add_argument("--force", action="store_true", help="replace an existing file")
    new.set_defaults(func=run_new)


def print_estimates(report: Report, rel: str, console: Console) -> None:
    """Per targeted node: what the memory check weighed, against the node's memoryGiB."""
    spec = build_spec(report.documents)
    model = next((d for d in spec.deployables if d.path == rel), None)
    if model is None:
        return
    nodes = inventory(spec)
    targeted = target_nodes(model, nodes)
    if not targeted:
        console.print("memory: no node targeted")
    for name in targeted:
        art = model.artifact_for(nodes[name].platform)
        need = memory_estimate(model, art) if art is not None else None
        if need is None:
            continue
        memory = nodes[name].memory_gib
        verdict = (
            "memoryGiB not set"
            if memory is None
            else f"{'fits' if need.total <= memory * GIB else 'does NOT fit'} in "
            f"memoryGiB {memory:g}"
        )
        console.print(f"memory on {name}: {need.describe()}: {verdict}")


def run_new(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    root = fleet_root(args.repo)
    facts = read_facts(args.file)
    found = digest.of_file(args.file)
    console.print(
        f"{args.file}: {facts.architecture}, {facts.parameters:,} parameters, "
        f"{facts.quantization or 'unknown quantization'}, trained context "
        f"{facts.context_length or 'unknown'}; sha256 {found.sha256}, {found.size} bytes"
    )
    folder = f"models/{args.name}"
    existing = versions(root, folder)
    base = documents.previous_version(
        {v: d for v, d in existing.items() if v != args.version}, args.version
    )
    artifact = {
        "platform": args.platform,
        "url": args.url,
        "sha256": found.sha256,
        "size": found.size,
    }
    doc = documents.new_model(
        existing[base] if base else None, args.name, args.version, artifact, facts
    )
    rel = f"{folder}/{args.version}.yaml"
    origin = "Written by `fleetkeeper model new`" + (f" from {base}.yaml" if base else "")
    report = add_file(root, rel, documents.to_yaml(doc, origin), force=args.force)
    sys.stdout.write(render_text(report.with_prefix(f"{root}/")))
    print_estimates(report, rel, console)
    if not report.ok:
        print(f"fleetkeeper model: {rel} not written: fix the errors above", file=sys.stderr)
        return 1
    print(f"fleetkeeper model: wrote {root / rel}", file=sys.stderr)
    return 0
