"""``fleetkeeper plan --format markdown``: the plan as a pull-request comment.

What a reviewer needs in one comment: which revision (previewed or approved, with its
evidence), what is refused and why, per workload the version and its batches, and per node
what changes, diffed against what runs now when a reconciler's ``GET /v1/fleet`` is given.
The first line is a hidden marker so a CI script can update its earlier comment instead of
adding one per push.

Pure: the plan view and the fleet status document in, markdown out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from reconciler.plan.select import semver_key

if TYPE_CHECKING:
    from reconciler.commands.plan import PlanView

MARKER = "<!-- fleetkeeper-plan -->"
Change = Literal["new", "upgrade", "downgrade", "unchanged", "removed"]
_SHOWN_VIOLATIONS = 20
_SHA = re.compile(r"^[0-9a-f]{40}$")


def cell(text: object) -> str:
    """Text safe inside a markdown table cell (no column breaks, no raw HTML)."""
    out = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def running_versions(status: Mapping[str, Any]) -> dict[str, dict[str, str | None]]:
    """Per node, per workload, the version running now, from a ``GET /v1/fleet`` document."""
    out: dict[str, dict[str, str | None]] = {}
    for node in status.get("nodes") or []:
        if not isinstance(node, dict) or not isinstance(node.get("node"), str):
            continue
        workloads = out.setdefault(node["node"], {})
        for w in node.get("workloads") or []:
            if isinstance(w, dict) and isinstance(w.get("name"), str):
                running = w.get("running")
                workloads[w["name"]] = running if isinstance(running, str) else None
    return out


def change(now: str | None, after: str | None) -> Change:
    """How one workload on one node changes."""
    if after is None:
        return "removed"
    if now is None:
        return "new"
    if now == after:
        return "unchanged"
    return "upgrade" if semver_key(after) > semver_key(now) else "downgrade"


def _heading(view: PlanView) -> list[str]:
    approved = view.result.revision
    if view.preview:
        shown = view.revision or (view.invalid.sha if view.invalid is not None else "?")
        return [
            f"### fleetkeeper plan for `{shown[:12]}`",
            "",
            "Preview: this revision is **not approved yet**; the approved revision is "
            + (f"`{approved[:12]}`." if approved else "none."),
        ]
    if view.revision is None:
        return ["### fleetkeeper plan", "", "**No approved revision**: nothing would be applied."]
    lines = [f"### fleetkeeper plan for `{view.revision[:12]}`", ""]
    approval = view.result.approval or {}
    signers = approval.get("signers") or []
    signed = (
        f", signed by {cell(', '.join(str(s) for s in signers))}"
        if isinstance(signers, list) and signers
        else ""
    )
    ref = str(approval.get("ref"))
    ref = ref[:12] if _SHA.match(ref) else ref  # a commit shortened; a tag name in full
    lines.append(f"Approved by {approval.get('kind')} `{cell(ref)}`{signed}.")
    return lines


def render_markdown(
    view: PlanView,
    running: Mapping[str, Mapping[str, str | None]] | None = None,
    server: str | None = None,
) -> str:
    """The comment text. ``running`` (from ``running_versions``) adds the now/after diff."""
    lines = [MARKER, *_heading(view), ""]
    if view.invalid is not None:
        errors = [v for v in view.invalid.violations if v.severity == "error"]
        lines += [
            f"**Invalid**: `{view.invalid.sha[:12]}` fails validation with {len(errors)} "
            "error(s); the reconciler would refuse it.",
            "",
            "```",
            *(str(v) for v in errors[:_SHOWN_VIOLATIONS]),
            *(
                [f"... and {len(errors) - _SHOWN_VIOLATIONS} more"]
                if len(errors) > _SHOWN_VIOLATIONS
                else []
            ),
            "```",
            "",
        ]
    if view.refused:
        lines += ["#### Refused", "", "| revision | reason |", "|---|---|"]
        lines += [f"| `{r.revision[:12]}` | {cell(r.reason)} |" for r in view.refused]
        lines.append("")
    if view.rollouts:
        lines += [
            "#### Rollout",
            "",
            "| workload | version | batches, in order (canaries alone first) | soak / timeout "
            "| windows |",
            "|---|---|---|---|---|",
        ]
        for ro in view.rollouts:
            batches = (
                "<br>".join(f"{i}. {cell(', '.join(b))}" for i, b in enumerate(ro.batches, 1))
                or "no node targeted"
            )
            lines.append(
                f"| {cell(ro.name)} ({ro.kind}) | {cell(_version(ro.version, ro.target_digest))} "
                f"| {batches} "
                f"| {ro.soak_seconds}s / {ro.timeout_seconds}s | {ro.windows} |"
            )
        lines.append("")
    lines += _nodes(view, running, server)
    return "\n".join(lines).rstrip() + "\n"


def _version(version: str, digest: str | None) -> str:
    """The version, and the config digest a config-only change shows up by (issue 17)."""
    return f"{version} +config {digest[:8]}" if digest else version


def _nodes(
    view: PlanView, running: Mapping[str, Mapping[str, str | None]] | None, server: str | None
) -> list[str]:
    if not view.nodes and not running:
        return []
    if running is None:  # nothing to diff against: what each node would run
        lines = ["#### Per node", "", "| node | workload | version |", "|---|---|---|"]
        for node, ws in view.nodes.items():
            lines += [f"| {cell(node)} | {cell(w['name'])} | {cell(w['version'])} |" for w in ws]
            lines += [] if ws else [f"| {cell(node)} | - | nothing targeted |"]
        return [*lines, ""]
    where = f" on {cell(server)}" if server else ""
    lines = [
        f"#### Per node, against what runs now{where}",
        "",
        "| node | workload | now | after | change |",
        "|---|---|---|---|---|",
    ]
    counts: dict[str, int] = {}
    for node in sorted(set(view.nodes) | set(running or {})):
        after = {str(w["name"]): str(w["version"]) for w in view.nodes.get(node, [])}
        now = dict((running or {}).get(node, {}))
        names = sorted(set(after) | set(now))
        if not names:
            lines.append(f"| {cell(node)} | - | - | - | nothing targeted |")
            continue
        for name in names:
            what = change(now.get(name), after.get(name))
            counts[what] = counts.get(what, 0) + 1
            shown = what if what == "unchanged" else f"**{what}**"
            lines.append(
                f"| {cell(node)} | {cell(name)} | {cell(now.get(name) or '-')} "
                f"| {cell(after.get(name) or '-')} | {shown} |"
            )
    if counts:
        summary = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        lines += ["", f"Changes: {summary}."]
    return [*lines, ""]
