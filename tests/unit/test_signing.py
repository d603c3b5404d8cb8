"""The signed desired-state form, pinned by vectors both halves are tested against: the
reconciler's signer (``reconciler.signing``, ``reconciler.api.hub``) and the agent's checks
(``agent.trust``) meet only in these bytes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.policy import LocalPolicy
from agent.trust import Accepted, Refused, check
from fleetkeeper_common import signing
from reconciler.api.hub import DesiredHub
from reconciler.signing import DocumentSigner, load_or_create_key
from reconciler.store import open_store
from tests.helpers.fakereconciler import sign_doc

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
VECTOR_DOC = {"node": "gpu-1", "generation": 7, "name": "café ☕", "b": [1, {"z": None, "a": True}]}
VECTOR_BYTES = (
    b'{"b":[1,{"a":true,"z":null}],"generation":7,"name":"caf\\u00e9 \\u2615","node":"gpu-1"}'
)
VECTOR_KEYID = "SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"
VECTOR_SIG = (
    "RhKX+CVBnp1mfw189msCS8ToVBKfWcXXsS55LC6Hpw9yLR5ZX2N50wDz0xOjqvGOTiUNejXkgC2Tpzs1+kMdAQ=="
)
PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4"
T0 = 1_800_000_000.0


def _loads(body: bytes) -> object:
    return json.loads(body)


def test_vectors() -> None:
    assert signing.canonical_bytes(VECTOR_DOC) == VECTOR_BYTES
    envelope = signing.sign(KEY, VECTOR_DOC)
    assert envelope["signatures"] == [{"keyid": VECTOR_KEYID, "sig": VECTOR_SIG}]
    assert signing.public_line(KEY.public_key()) == PUBLIC
    trusted = signing.parse_public_keys(PUBLIC + " comment\n", "vector")
    assert signing.verify(signing.parse_envelope(envelope), trusted) == VECTOR_KEYID
    # the reconciler's spliced form is the same bytes as the envelope serialized whole
    assert signing.envelope_bytes(KEY, VECTOR_KEYID, VECTOR_DOC) == signing.canonical_bytes(
        envelope
    )


def test_keyid_is_the_ssh_keygen_fingerprint(tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    pub.write_text(PUBLIC + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True)
    assert out.stdout.split()[1] == VECTOR_KEYID


def test_generated_key_is_0600_and_reloads(tmp_path: Path) -> None:
    key, path = load_or_create_key(None, tmp_path)
    assert path == tmp_path / "signing_key" and path.stat().st_mode & 0o777 == 0o600
    again, _ = load_or_create_key(None, tmp_path)
    assert signing.keyid(again.public_key()) == signing.keyid(key.public_key())
    # the private key file is what ssh-keygen reads too
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True)
    assert out.stdout.split()[:2] == (tmp_path / "signing_key.pub").read_text().split()[:2]


def _doc(generation: int, version: str = "1.0.0", node: str = "gpu-1") -> dict[str, Any]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": node,
        "generation": generation,
        "revision": None,
        "approval": None,
        "workloads": [
            {
                "name": "hello",
                "kind": "process",
                "version": version,
                "artifact": {"platform": "any", "url": "https://a.test/x", "sha256": "0" * 64},
                "run": {"command": ["bin/hello"]},
            }
        ],
    }


def _signed(doc: dict[str, Any], issued: float = T0, key: Ed25519PrivateKey = KEY) -> object:
    return _loads(sign_doc(key, doc, issued=issued, valid=3600))


TRUSTED = signing.parse_public_keys(PUBLIC, "vector")
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))

# (case, received envelope, last accepted document, now, want: refusal text or "accept"/"refresh")
CASES: list[tuple[str, object, dict[str, Any] | None, float, str]] = [
    ("first document", _signed(_doc(1)), None, T0 + 1, "accept"),
    ("unsigned", _doc(1), None, T0, "unsigned document"),
    ("untrusted key", _signed(_doc(1), key=OTHER), None, T0, "signed by untrusted key"),
    ("other node", _signed(_doc(1, node="gpu-2")), None, T0, "document for node 'gpu-2'"),
    ("expired", _signed(_doc(1)), None, T0 + 3600, "document expired at"),
    ("older generation", _signed(_doc(1)), _doc(2), T0, "older than accepted 2 (rollback)"),
    ("newer generation", _signed(_doc(3, "2.0.0")), _doc(2), T0, "accept"),
    (
        "refresh",
        _signed(_doc(2), T0 + 100),
        {**_doc(2), "issuedAt": "2027-01-15T08:00:00Z"},
        T0 + 101,
        "refresh",
    ),
    (
        "older signature of the same generation",
        _signed(_doc(2), T0),
        {**_doc(2), "issuedAt": "2027-01-15T08:10:00Z"},
        T0 + 1,
        "signed before the accepted one (replay)",
    ),
    ("same generation, other content", _signed(_doc(2, "9.9.9")), _doc(2), T0, "other content"),
]


@pytest.mark.parametrize(("case", "raw", "last", "now", "want"), CASES, ids=[c[0] for c in CASES])
def test_agent_checks(
    case: str, raw: object, last: dict[str, Any] | None, now: float, want: str
) -> None:
    got = check(raw, node="gpu-1", trusted=TRUSTED, last=last, policy=LocalPolicy(), now=now)
    if want in ("accept", "refresh"):
        assert isinstance(got, Accepted), got
        assert got.refresh == (want == "refresh")
    else:
        assert isinstance(got, Refused) and want in got.reason, got


def test_tampered_signed_field_is_refused() -> None:
    raw = _signed(_doc(1))
    assert isinstance(raw, dict)
    raw["signed"]["workloads"][0]["run"]["command"] = ["/bin/sh"]
    got = check(raw, node="gpu-1", trusted=TRUSTED, last=None, policy=LocalPolicy(), now=T0)
    assert isinstance(got, Refused) and "bad signature by trusted key" in got.reason


def test_hub_re_signs_at_half_life_without_a_new_generation(tmp_path: Path) -> None:
    now = [T0]
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        rec, _ = store.put_desired("gpu-1", _doc(0))
        hub = DesiredHub(store, [rec], DocumentSigner(KEY, 3600), clock=lambda: now[0])
        first = hub.get("gpu-1")
        assert first.signed is not None
        assert first.signed.refresh_at - first.signed.issued_at == 1800
        assert first.signed.issued_at <= now[0] < first.signed.refresh_at
        # a restarted reconciler signs the same bytes: ETags (and 304s) survive restarts
        again = DesiredHub(store, [rec], DocumentSigner(KEY, 3600), clock=lambda: now[0])
        assert again.get("gpu-1").etag == first.etag
        assert again.get("gpu-1").signed == first.signed
        now[0] = first.signed.refresh_at - 1
        assert hub.etag("gpu-1") == first.etag  # before half-life: the 304 path holds
        now[0] += 1
        refreshed = hub.get("gpu-1")
        assert refreshed.etag != first.etag and refreshed.generation == first.generation
        assert first.signed is not None and refreshed.signed is not None
        last = check(
            _loads(first.signed.body),
            node="gpu-1",
            trusted=TRUSTED,
            last=None,
            policy=LocalPolicy(),
            now=T0,
        )
        assert isinstance(last, Accepted)
        got = check(
            _loads(refreshed.signed.body),
            node="gpu-1",
            trusted=TRUSTED,
            last=last.document,
            policy=LocalPolicy(),
            now=now[0],
        )
        assert isinstance(got, Accepted) and got.refresh  # a refresh, never a rollback
    finally:
        store.close()


POLICY_CASES: list[tuple[str, LocalPolicy, str | None]] = [
    ("bin/hello", LocalPolicy(), None),
    ("./hello", LocalPolicy(), None),
    ("/bin/sh", LocalPolicy(), "outside the version directory"),
    ("bin/../../../bin/sh", LocalPolicy(), "escapes the version directory"),
    ("python3", LocalPolicy(), "bare name"),
    ("python3", LocalPolicy(allowed_programs=frozenset({"python3"})), None),
    ("/usr/bin/python3", LocalPolicy(allowed_programs=frozenset({"/usr/bin/python3"})), None),
]


@pytest.mark.parametrize(("program", "policy", "want"), POLICY_CASES)
def test_program_policy(program: str, policy: LocalPolicy, want: str | None) -> None:
    from agent.policy import program_violation

    got = program_violation(program, policy)
    assert (got is None) if want is None else (got is not None and want in got)


URL_CASES: list[tuple[str, LocalPolicy, str | None]] = [
    ("https://a.test/x", LocalPolicy(), None),
    ("http://127.0.0.1/x", LocalPolicy(), "allowInsecureURLs"),
    ("http://127.0.0.1/x", LocalPolicy(allow_insecure_urls=True), None),
    ("file:///etc/hostname", LocalPolicy(allow_insecure_urls=True), "allowFileURLs"),
    ("file:///srv/a.tgz", LocalPolicy(allow_file_urls=True), None),
]


@pytest.mark.parametrize(("url", "policy", "want"), URL_CASES)
def test_url_policy(url: str, policy: LocalPolicy, want: str | None) -> None:
    from agent.policy import url_violation

    got = url_violation(url, policy)
    assert (got is None) if want is None else (got is not None and want in got)


def test_bad_signing_key_files_name_the_file(tmp_path: Path) -> None:
    from reconciler.errors import ConfigError

    rsa = tmp_path / "rsa"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True
    )
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    for path, want in [
        (rsa, "not an Ed25519 key"),
        (garbage, "not an unencrypted OpenSSH private key"),
        (tmp_path / "missing", "cannot read"),
    ]:
        with pytest.raises(ConfigError, match=want) as caught:
            load_or_create_key(path, tmp_path)
        assert str(path) in str(caught.value)


def test_reconciler_shows_what_the_node_refused() -> None:
    from reconciler.plan.observations import NodeReport
    from reconciler.views.view import node_rows

    report = {
        "node": "gpu-1",
        "generation": 3,
        "workloads": [],
        "desired": {"phase": "Refused", "message": "signed by untrusted key SHA256:x"},
    }
    parsed = NodeReport.from_json("gpu-1", report, T0)
    assert (parsed.desired_phase, parsed.desired_message) == (
        "Refused",
        "signed by untrusted key SHA256:x",
    )
    legacy = NodeReport.from_json("gpu-1", {"node": "gpu-1", "workloads": []}, T0)
    assert legacy.desired_phase == ""
    status = {
        "nodes": [
            {
                "node": "gpu-1",
                "health": "Healthy",
                "lastSeen": None,
                "workloads": [],
                "desired": {"phase": "Refused", "message": "x"},
            },
        ]
    }
    (row,) = node_rows(status, T0)
    assert row.health == "Healthy, desired Refused" and row.tone == "bad"
