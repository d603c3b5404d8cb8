"""Who may register which node name (``reconciler.api.admission.admit``), as a table."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.api.admission import Admitted, Presented, Refused, admit
from reconciler.plan.admission import Claims
from reconciler.spec import NodeSpec
from reconciler.store.base import JoinToken, NodeRecord

NOW = 1000.0
GPU1 = NodeSpec("gpu-1", "linux/amd64", roles=("inference",), labels={"site": "lab"})
REGISTERED = NodeRecord("gpu-1", {}, "current-hash", 1.0, {"via": "bootstrap"})


def tok(**kw: Any) -> Presented:
    fields: dict[str, Any] = {"id": "t1", "token_hash": "x", "created_at": 0.0}
    fields |= {"expires_at": 2000.0, "uses": 1}
    fields |= kw
    return Presented("join-token", JoinToken(**fields))


BOOT = Presented("bootstrap")
OWN = Presented("node-credential")
NONE = Claims((), {})
INF = Claims(("inference",), {})

# (name, claims, credential, existing, declared, spec known) -> status (200) or refusal reason
CASES: list[tuple[str, str, Claims, Presented, NodeRecord | None, NodeSpec | None, bool, Any]] = [
    ("own credential rotates", "gpu-1", NONE, OWN, REGISTERED, GPU1, True, 200),
    ("impostor with bootstrap", "gpu-1", NONE, BOOT, REGISTERED, GPU1, True, "name-taken"),
    (
        "impostor with a token for the name",
        "gpu-1",
        NONE,
        tok(node="gpu-1"),
        REGISTERED,
        GPU1,
        True,
        "name-taken",
    ),
    ("bootstrap, declared, free", "gpu-1", NONE, BOOT, None, GPU1, True, 200),
    ("bootstrap, new name", "evil-1", INF, BOOT, None, None, True, "not-declared"),
    ("bootstrap before any revision", "gpu-1", NONE, BOOT, None, None, False, "not-ready"),
    ("node token, right name", "evil-1", INF, tok(node="evil-1"), None, None, False, 200),
    ("node token, other name", "gpu-2", NONE, tok(node="gpu-1"), None, None, True, "wrong-node"),
    ("expired", "gpu-1", NONE, tok(expires_at=NOW), None, GPU1, True, "token-expired"),
    ("used up", "gpu-1", NONE, tok(used=1), None, GPU1, True, "token-used-up"),
    ("revoked", "gpu-1", NONE, tok(revoked_at=5.0), None, GPU1, True, "token-revoked"),
    ("unscoped, declared", "gpu-1", NONE, tok(), None, GPU1, True, 200),
    ("unscoped, new name", "edge-1", INF, tok(), None, None, True, "not-declared"),
    ("roles scope covers claims", "edge-1", INF, tok(roles=("inference",)), None, None, True, 200),
    (
        "roles scope, extra role",
        "edge-1",
        Claims(("inference", "gpu"), {}),
        tok(roles=("inference",)),
        None,
        None,
        True,
        "outside-scope",
    ),
    (
        "roles scope, unscoped label",
        "edge-1",
        Claims((), {"site": "x"}),
        tok(roles=("inference",)),
        None,
        None,
        True,
        "outside-scope",
    ),
    (
        "labels scope covers",
        "edge-1",
        Claims((), {"site": "lab"}),
        tok(labels={"site": "lab"}),
        None,
        None,
        True,
        200,
    ),
    (
        "declared file judged, not claims",
        "gpu-1",
        INF,
        tok(roles=("coding",)),
        None,
        GPU1,
        True,
        "outside-scope",
    ),
    # a declared node's labels come from an approved file: only the scope's labels must match
    (
        "declared carries the label",
        "gpu-1",
        NONE,
        tok(labels={"site": "lab"}),
        None,
        GPU1,
        True,
        200,
    ),
    (
        "declared lacks the label",
        "gpu-1",
        NONE,
        tok(labels={"site": "x"}),
        None,
        GPU1,
        True,
        "outside-scope",
    ),
    ("declared roles within", "gpu-1", NONE, tok(roles=("inference", "b")), None, GPU1, True, 200),
]


@pytest.mark.parametrize(
    ("what", "node", "claims", "presented", "existing", "declared", "known", "want"),
    CASES,
    ids=[c[0] for c in CASES],
)
def test_admit(
    what: str,
    node: str,
    claims: Claims,
    presented: Presented,
    existing: NodeRecord | None,
    declared: NodeSpec | None,
    known: bool,
    want: Any,
) -> None:
    got = admit(node, claims, presented, existing, declared, known, NOW)
    if want == 200:
        assert isinstance(got, Admitted), got
        assert got.replaces == (existing.token_hash if existing else None)
        assert got.join_token == (presented.token.id if presented.token else None)
    else:
        assert isinstance(got, Refused) and got.reason == want, got
        if want != "not-ready":  # the message says what was wrong with what
            assert node in got.message or "join token" in got.message


def test_a_scoped_unlisted_node_cannot_widen_its_claims_by_rotating() -> None:
    rec = NodeRecord("edge-1", {}, "h", 1.0, {"via": "join-token", "scope": {"roles": ["a"]}})
    assert isinstance(admit("edge-1", Claims(("a",), {}), OWN, rec, None, True, NOW), Admitted)
    wider = admit("edge-1", Claims(("a", "b"), {}), OWN, rec, None, True, NOW)
    assert isinstance(wider, Refused) and wider.reason == "outside-scope"
