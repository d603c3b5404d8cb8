"""`fleetkeeper plan`: the approved revision and what each node would run, offline.

Like ``terraform plan``: reads the fleet repo and the reconciler config, writes nothing
(the OpenPGP keyring is imported into a temporary GNUPGHOME that is deleted afterwards).
With no stored "last applied revision", approval is judged from ``approval.baseline`` (or
the start of history without one), exactly as on the reconciler's first start; signatures
are judged as of now, as a reconciler that sees the commits for the first time would.

The human format is what a reviewer pastes into a pull request: the approval evidence,
refused commits, and per workload which nodes get which version in which batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from reconciler.approval import ApprovalResult, Refusal, evaluate
from reconciler.approval.settings import ApprovalSettings
from reconciler.config import DEFAULT_BRANCH, Config, parse_config
from reconciler.errors import ConfigError, sanitize
from reconciler.plan.batches import make_batches
from reconciler.plan.select import (
    NodeFacts,
    inventory,
    latest_versions,
    target_nodes,
)
from reconciler.plan.windows import describe, effective
from reconciler.revision import LoadedRevision, load_revision
from reconciler.source import GitSource, is_url
from reconciler.spec import JSON, Deployable, FleetSpec
from reconciler.views.client import AdminClient, read_token
from reconciler.views.plan_comment import render_markdown, running_versions

PIPE_WIDTH = 160
_SHOWN_VIOLATIONS = 5


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plan",
        help="the approved revision and the desired state per node, computed offline",
        description="Judge which revision of the fleet repo is approved (with the trust "
        "settings of --config) and show what every node would run and in which batches. "
        "Writes nothing. Exit 1 when the approved revision is invalid.",
    )
    p.add_argument("--repo", help="the fleet repo (a local path; default: the current directory)")
    p.add_argument("--config", type=Path, help="reconciler config (approval settings, branch)")
    p.add_argument(
        "--branch", help=f"protected branch (default: from --config, else {DEFAULT_BRANCH})"
    )
    p.add_argument(
        "--last-applied",
        metavar="SHA",
        help="judge from this applied revision instead of from the start of history",
    )
    p.add_argument(
        "--preview",
        metavar="REV",
        help="show what REV (e.g. a pull request's head) would deploy, approved or not",
    )
    p.add_argument(
        "--format",
        choices=("text", "json", "markdown"),
        default="text",
        help="markdown: a pull-request comment (see example-fleet-repo/ci/)",
    )
    p.add_argument(
        "--server",
        metavar="URL",
        help="with --format markdown: diff against what runs now on this reconciler "
        "(GET /v1/fleet with the admin token from --token-file or $FLEETKEEPER_TOKEN)",
    )
    p.add_argument("--token-file", help="file holding the admin token (with --server)")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Rollout:
    """One workload's planned rollout: version and node batches (canaries first)."""

    name: str
    kind: str
    version: str
    batches: tuple[tuple[str, ...], ...]
    soak_seconds: int = 0
    timeout_seconds: int = 0
    windows: str = "any time"  # the release's windows, then nodes whose own file decides
    # config files and secrets (issue 17): a PR that edits only them changes this
    target_digest: str | None = None


@dataclass(frozen=True)
class PlanView:
    result: ApprovalResult
    revision: str | None  # None when nothing approved or the approved revision is invalid
    refused: tuple[Refusal, ...]
    nodes: Mapping[str, list[dict[str, JSON]]]
    rollouts: tuple[Rollout, ...]
    invalid: LoadedRevision | None
    preview: bool = False  # ``revision`` is a previewed commit, not necessarily approved
    baseline: str | None = None  # approval.baseline: where judging starts


def rollouts(spec: FleetSpec, nodes: Mapping[str, NodeFacts]) -> tuple[Rollout, ...]:
    """Pure: per latest workload version, the nodes it reaches (targeted and with an
    artifact for their platform, as ``select.desired_workloads`` decides) in batches."""
    out = []
    for name, d in sorted(latest_versions(spec).items()):
        chosen = [n for n in target_nodes(d, nodes) if d.artifact_for(nodes[n].platform)]
        batches = tuple(make_batches(chosen, d.rollout))
        soak, timeout = d.rollout.soak_seconds, d.rollout.timeout_seconds
        out.append(
            Rollout(
                name,
                d.kind,
                d.version,
                batches,
                soak,
                timeout,
                _windows(d, chosen, nodes),
                d.target_digest,
            )
        )
    return tuple(out)


def _windows(d: Deployable, chosen: list[str], nodes: Mapping[str, NodeFacts]) -> str:
    """The release's windows, and the nodes whose own file's windows apply instead."""
    text = describe(d.rollout.windows)
    if d.rollout.windows == "ignore":
        return text
    own = [
        f"{n}: {describe(effective(d.rollout.windows, nodes[n].windows))}"
        for n in chosen
        if nodes[n].windows
    ]
    return "<br>".join([text, *own])


def node_workloads(
    plan: tuple[Rollout, ...], nodes: Mapping[str, NodeFacts]
) -> dict[str, list[dict[str, JSON]]]:
    """Pure: per node, name/kind/version of what it would run (workloads sorted by name).
    The same selection as ``select.desired_workloads`` without building whole documents."""
    out: dict[str, list[dict[str, JSON]]] = {n: [] for n in sorted(nodes)}
    for ro in plan:
        for batch in ro.batches:
            for node in batch:
                out[node].append({"name": ro.name, "kind": ro.kind, "version": ro.version})
    return out


def invalid_refusal(loaded: LoadedRevision) -> Refusal:
    errors = [v for v in loaded.violations if v.severity == "error"]
    shown = "; ".join(str(v) for v in errors[:_SHOWN_VIOLATIONS])
    more = len(errors) - _SHOWN_VIOLATIONS
    return Refusal(
        loaded.sha,
        f"Invalid: approved but fails validation ({len(errors)} error(s)): {shown}"
        + (f"; and {more} more" if more > 0 else ""),
    )


def build_view(
    result: ApprovalResult,
    loaded: LoadedRevision | None,
    *,
    preview: bool = False,
    baseline: str | None = None,
) -> PlanView:
    """Pure: the plan from the approval result and the loaded approved (or previewed)
    revision."""
    preview = preview and (loaded is None or loaded.sha != result.revision)
    if loaded is None or loaded.spec is None:
        refused = result.refused + ((invalid_refusal(loaded),) if loaded is not None else ())
        return PlanView(result, None, refused, {}, (), loaded, preview, baseline)
    nodes = inventory(loaded.spec)
    plan = rollouts(loaded.spec, nodes)
    workloads = node_workloads(plan, nodes)
    return PlanView(result, loaded.sha, result.refused, workloads, plan, None, preview, baseline)


def to_json(view: PlanView) -> dict[str, JSON]:
    approved = view.revision is not None and not view.preview
    approval = view.result.approval if approved else None
    return {
        "revision": view.revision,
        "baseline": view.baseline,
        "approval": dict(approval) if approval is not None else None,
        "refused": [{"revision": r.revision, "reason": r.reason} for r in view.refused],
        "nodes": {
            node: {
                "workloads": [
                    {"name": w["name"], "kind": w["kind"], "version": w["version"]} for w in ws
                ]
            }
            for node, ws in view.nodes.items()
        },
    }


def render_text(view: PlanView, console: Console) -> None:
    approval = view.result.approval
    if view.preview:
        approved = view.result.revision or "none"
        shown = view.revision or (view.invalid.sha if view.invalid is not None else "?")
        console.print(
            Text(f"Preview of {shown}", style="bold")
            + Text(f" (not approved; the approved revision is {approved})", style="yellow")
        )
    elif view.revision is None:
        console.print(Text("No approved revision: nothing would be applied.", style="bold red"))
    else:
        console.print(Text(f"Approved revision {view.revision}", style="bold green"))
        if approval is not None:
            signers = approval.get("signers") or []
            assert isinstance(signers, list)
            console.print(
                f"  by {approval.get('kind')} {approval.get('ref')}"
                + (f", signed by {', '.join(str(s) for s in signers)}" if signers else "")
            )
    if view.baseline is not None:
        console.print(
            f"  Baseline {view.baseline} (approval.baseline: judging starts there; it and its "
            "ancestors are trusted as they are)"
        )
    if view.refused:
        table = Table(title="Refused", title_justify="left", show_lines=False)
        table.add_column("revision", no_wrap=True)
        table.add_column("reason")
        for r in view.refused:
            table.add_row(r.revision[:12], r.reason)
        console.print(table)
    if view.rollouts:
        table = Table(title="Rollout", title_justify="left")
        table.add_column("workload")
        table.add_column("version")
        table.add_column("batches (in order; canaries alone first)")
        for ro in view.rollouts:
            batches = "\n".join(f"{i}. {', '.join(b)}" for i, b in enumerate(ro.batches, 1))
            table.add_row(f"{ro.name} ({ro.kind})", ro.version, batches or "no node targeted")
        console.print(table)
    if view.nodes:
        table = Table(title="Desired state per node", title_justify="left")
        table.add_column("node", no_wrap=True)
        table.add_column("workloads")
        for node, ws in view.nodes.items():
            table.add_row(node, ", ".join(f"{w['name']} {w['version']}" for w in ws) or "-")
        console.print(table)


def _repo_path(args: argparse.Namespace, configured: str | None) -> str:
    wanted = args.repo or (configured if configured and not is_url(configured) else None) or "."
    if is_url(wanted):
        raise ConfigError(f"plan reads a local repository; clone {wanted} and pass --repo PATH")
    found = pygit2.discover_repository(wanted)
    if found is None:
        raise ConfigError(f"--repo {wanted}: not inside a git repository")
    return str(found)


def compute(
    repo: str,
    branch: str,
    settings: ApprovalSettings,
    last_applied: str | None,
    preview: str | None = None,
) -> PlanView:
    with tempfile.TemporaryDirectory(prefix="fleetkeeper-plan-") as tmp:
        source = GitSource(repo, Path(tmp), branch)
        result = evaluate(source, settings, last_applied, Path(tmp))
        shown = result.revision
        if preview is not None:
            try:
                shown = str(source.repository().revparse_single(preview).peel(pygit2.Commit).id)
            except (KeyError, ValueError, pygit2.GitError) as exc:
                raise ConfigError(f"--preview {preview}: not a commit in {repo}") from exc
        loaded = load_revision(source.repository(), shown) if shown is not None else None
    return build_view(result, loaded, preview=preview is not None, baseline=settings.baseline)


_SECRET_KEYS = ("bootstrapTokenFile", "adminTokenFile", "webhookSecretFile")


def load_trust(path: Path) -> Config:
    """The reconciler config without its secrets: plan needs the repo, the branch and the
    approval settings, and a reviewer may not be able to read the token files."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    doc = {k: v for k, v in doc.items() if k not in _SECRET_KEYS}
    return parse_config(doc, base=path.parent.resolve(), env={}, source=path)


def _running_now(server: str, token_file: str | None) -> dict[str, dict[str, str | None]]:
    from reconciler.commands.status import quiet_http_logs

    quiet_http_logs()
    with AdminClient(server, read_token(token_file)) as client:
        return running_versions(client.fleet())


def run(args: argparse.Namespace) -> int:
    if args.server and args.format != "markdown":
        print("fleetkeeper plan: --server needs --format markdown", file=sys.stderr)
        return 2
    settings, branch, configured = ApprovalSettings(), DEFAULT_BRANCH, None
    if args.config is not None:
        cfg = load_trust(args.config)
        settings, branch, configured = cfg.approval, cfg.branch, cfg.repo
    view = compute(
        _repo_path(args, configured),
        args.branch or branch,
        settings,
        args.last_applied,
        args.preview,
    )
    if args.format == "json":
        sys.stdout.write(json.dumps(to_json(view), indent=2) + "\n")
    elif args.format == "markdown":
        running = _running_now(args.server, args.token_file) if args.server else None
        sys.stdout.write(render_markdown(view, running, sanitize(args.server or "") or None))
    else:
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(PIPE_WIDTH, console.width))
        render_text(view, console)
    return 1 if view.invalid is not None else 0
