"""Who may register which node name, with which credential. Pure: no clock, store or I/O.

The register handler finds out what the presented bearer token is (the node's current
credential, a join token, the old shared bootstrap token) and asks ``admit``:

- a name that is already registered is re-registered only by the holder of its current
  credential (``fleetkeeper node reset NAME`` frees it otherwise); a refusal changes
  nothing, so the real node keeps working;
- the bootstrap token registers only names declared in ``nodes/`` and not yet registered;
- a join token must be active (not expired, used up or revoked) and fit its scope: the
  one node name it names, or roles and labels. A node without a file may claim only roles
  and labels the scope covers (they will be trusted for targeting); a node with a file
  must have its roles among the scope's roles and carry the scope's labels. A token with
  no scope registers declared names only.

What a node was admitted with is kept on its record (``NodeRecord.admission``): the planner
trusts the claimed roles and labels of a node without a file only when that scope covered
them (``reconciler.plan.admission.scope_covers_claims``) and ``fleet.yaml`` says
``registration: {unlisted: allow}``.

Pure like the planner (no clock, store or I/O); it lives at the API edge because it
judges the store's records (``JoinToken``, ``NodeRecord``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reconciler.plan.admission import (
    Claims,
    fit_problems,
    scope_covers_claims,
    scope_problems,
)
from reconciler.spec import JSON, NodeSpec
from reconciler.store.base import JoinToken, NodeRecord

CredentialKind = Literal["node-credential", "join-token", "bootstrap"]


@dataclass(frozen=True)
class Presented:
    """What the bearer token turned out to be (``token`` only for a join token)."""

    kind: CredentialKind
    token: JoinToken | None = None

    @property
    def label(self) -> str:
        """How the audit log names the credential (never the secret)."""
        return f"join token {self.token.id}" if self.token is not None else self.kind


@dataclass(frozen=True)
class Admitted:
    admission: dict[str, JSON]  # stored on the node record
    replaces: str | None  # the credential hash being replaced (None: a new name)
    join_token: str | None  # the join token whose use this registration consumes


@dataclass(frozen=True)
class Refused:
    status: int  # HTTP status of the answer
    reason: str  # short code for the audit log
    message: str  # for the caller and the operator


def token_scope(token: JoinToken) -> dict[str, JSON]:
    if token.node is not None:
        return {"node": token.node}
    scope: dict[str, JSON] = {}
    if token.roles is not None:
        scope["roles"] = list(token.roles)
    if token.labels is not None:
        scope["labels"] = dict(token.labels)
    return scope


def _reset_hint(node: str) -> str:
    return (
        f"node {node!r} is already registered: re-registering needs its current node "
        f"credential, or an operator's `fleetkeeper node reset {node}`"
    )


def admit(
    node: str,
    claims: Claims,
    presented: Presented,
    existing: NodeRecord | None,
    declared: NodeSpec | None,
    spec_known: bool,
    now: float,
) -> Admitted | Refused:
    """May ``presented`` register ``node`` (claiming ``claims``)? See the module docstring.

    ``declared`` is the node's file in the applied revision; ``spec_known`` False means no
    revision is applied yet, so whether a name is declared cannot be told.
    """
    if presented.kind == "node-credential":
        assert existing is not None  # a node credential is only recognised for its node
        scoped = existing.admission.get("scope")
        role_scoped = isinstance(scoped, dict) and ("roles" in scoped or "labels" in scoped)
        if role_scoped and declared is None and not scope_covers_claims(existing.admission, claims):
            return Refused(
                403,
                "outside-scope",
                f"node {node!r} was admitted by a join token whose scope does not cover "
                "the roles and labels it now claims; list it in nodes/ or use a new token",
            )
        return Admitted(dict(existing.admission), existing.token_hash, None)
    if existing is not None:
        return Refused(409, "name-taken", _reset_hint(node))
    if presented.kind == "bootstrap":
        if not spec_known:
            return Refused(503, "not-ready", "no fleet revision is applied yet: retry shortly")
        if declared is None:
            return Refused(
                403,
                "not-declared",
                f"the bootstrap token registers only nodes declared in nodes/, and {node!r} "
                f"is not: add nodes/{node}.yaml or use a join token "
                f"(`fleetkeeper token create --node {node}`)",
            )
        return Admitted({"via": "bootstrap"}, None, None)
    token = presented.token
    assert token is not None
    state = token.state(now)
    if state != "active":
        return Refused(401, f"token-{state}", f"join token {token.id} is {state}")
    admission: dict[str, JSON] = {"via": "join-token", "tokenId": token.id}
    if token.node is not None:
        if token.node != node:
            return Refused(
                403,
                "wrong-node",
                f"join token {token.id} is for node {token.node!r}, not for {node!r}",
            )
        return Admitted({**admission, "scope": {"node": token.node}}, None, token.id)
    if not spec_known:
        return Refused(503, "not-ready", "no fleet revision is applied yet: retry shortly")
    if token.roles is None and token.labels is None:
        if declared is None:
            return Refused(
                403,
                "not-declared",
                f"join token {token.id} has no scope, so it registers only nodes declared in "
                f"nodes/, and {node!r} is not",
            )
        return Admitted({**admission, "scope": {}}, None, token.id)
    if declared is None:
        problems = scope_problems(token.roles, token.labels, claims)
    else:
        problems = fit_problems(token.roles, token.labels, declared)
    if problems:
        whose = "it claims" if declared is None else f"nodes/{node}.yaml gives it"
        return Refused(
            403,
            "outside-scope",
            f"join token {token.id} does not fit: {', '.join(problems)} that {whose}",
        )
    return Admitted({**admission, "scope": token_scope(token)}, None, token.id)
