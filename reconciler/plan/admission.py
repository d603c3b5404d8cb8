"""How far a node's self-reported roles and labels may be trusted. Pure.

A node with a file in ``nodes/`` is planned from that approved file. A node without one
claims its roles and labels when it registers; the planner trusts those claims only when
the join token it registered with had a roles/labels scope that covered them (recorded
on its record as ``admission``), and only when ``fleet.yaml`` allows unlisted nodes. The
register endpoint (``reconciler.api.admission``) uses the same checks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from reconciler.spec import JSON, NodeSpec


@dataclass(frozen=True)
class Claims:
    roles: tuple[str, ...]
    labels: Mapping[str, str]


def claims_of(facts: Mapping[str, JSON]) -> Claims:
    roles, labels = facts.get("roles"), facts.get("labels")
    return Claims(
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )


def scope_problems(
    roles: Sequence[str] | None, labels: Mapping[str, str] | None, claims: Claims
) -> list[str]:
    """What of ``claims`` the scope (roles, labels) does not cover; [] when it covers all."""
    allowed_roles = set(roles or ())
    allowed_labels = dict(labels or {})
    out = [f"role {r!r}" for r in claims.roles if r not in allowed_roles]
    out += [f"label {k}={v}" for k, v in claims.labels.items() if allowed_labels.get(k) != v]
    return out


def fit_problems(
    roles: Sequence[str] | None, labels: Mapping[str, str] | None, node: NodeSpec
) -> list[str]:
    """Why a node declared in nodes/ does not fit a token's scope ([] when it fits).

    Its roles and labels come from an approved file, so only what the scope names is
    checked: every role within ``roles`` (when given), every label of ``labels`` carried.
    """
    out = [f"role {r!r}" for r in node.roles if roles is not None and r not in roles]
    out += [
        f"label {k}={v} (it has {node.labels.get(k)!r})"
        for k, v in (labels or {}).items()
        if node.labels.get(k) != v
    ]
    return out


def scope_covers_claims(admission: Mapping[str, JSON], claims: Claims) -> bool:
    """True when the node was admitted by a role/label scope that covers ``claims``."""
    scope = admission.get("scope")
    if not isinstance(scope, dict) or not ("roles" in scope or "labels" in scope):
        return False
    roles, labels = scope.get("roles"), scope.get("labels")
    return not scope_problems(
        [str(r) for r in roles] if isinstance(roles, list) else None,
        {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None,
        claims,
    )
