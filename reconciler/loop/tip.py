"""Release rows for a newest tip that is not applied: refused (``Unapproved``) or approved
but invalid (``Invalid``). The loop keeps them in store meta ``tip-status``; the fleet
status shows them after the rollouts."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pygit2

from reconciler.approval.history import contains
from reconciler.approval.values import Refusal
from reconciler.plan.select import latest_versions
from reconciler.plan.state import fingerprint
from reconciler.revision import LoadedRevision
from reconciler.spec import JSON, FleetSpec

MAX_AUDITED_VIOLATIONS = 50


def invalid(loaded: LoadedRevision) -> tuple[str, list[dict[str, JSON]], dict[str, JSON]]:
    """(message, rows, audit details) for an approved revision that failed validation."""
    errors = [v for v in loaded.violations if v.severity == "error"]
    first = str(errors[0]) if errors else "invalid"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    message = f"Invalid: {loaded.sha} is not applied: {first}{more}"
    by_release: dict[tuple[str, str], str] = {}
    for v in errors:
        parts = v.path.split("/")
        if len(parts) == 3 and parts[0] in ("releases", "models"):
            by_release.setdefault((parts[1], parts[2].rsplit(".", 1)[0]), str(v))
    if not by_release:
        by_release[("fleet", loaded.sha[:12])] = first
    rows: list[dict[str, JSON]] = [
        {
            "agent": agent,
            "version": version,
            "phase": "Invalid",
            "batch": None,
            "reason": f"{loaded.sha[:12]}: {why}",
        }
        for (agent, version), why in sorted(by_release.items())
    ]
    details: dict[str, JSON] = {"violations": [str(v) for v in errors[:MAX_AUDITED_VIOLATIONS]]}
    return message, rows, details


def unapproved_rows(
    repo: pygit2.Repository,
    refused: Sequence[Refusal],
    approved: str | None,
    applied: FleetSpec | None,
    load: Callable[[str], LoadedRevision],
) -> list[dict[str, JSON]]:
    """Rows for the newest refused commit after the approved revision: one per release it
    changes against the ``applied`` spec, else one fleet-wide row. ``load`` is the pass's
    ``load_revision`` (once per sha)."""
    current = [
        r
        for r in refused
        if approved is None or not (r.revision == approved or contains(repo, approved, r.revision))
    ]
    if not current:
        return []
    newest = current[-1]
    base = latest_versions(applied) if applied is not None else {}
    rows: list[dict[str, JSON]] = []
    try:
        loaded: LoadedRevision | None = load(newest.revision)
    except Exception:  # a refused commit that cannot even be read: one fleet-wide row
        loaded = None
    if loaded is not None and loaded.spec is not None:
        for name, d in sorted(latest_versions(loaded.spec).items()):
            old = base.get(name)
            if old is None or fingerprint(old) != fingerprint(d):
                rows.append(
                    {
                        "agent": name,
                        "kind": d.kind,
                        "version": d.version,
                        "phase": "Unapproved",
                        "batch": None,
                        "reason": newest.reason,
                    }
                )
    if not rows:
        rows.append(
            {
                "agent": "fleet",
                "version": newest.revision[:12],
                "phase": "Unapproved",
                "batch": None,
                "reason": newest.reason,
            }
        )
    return rows
