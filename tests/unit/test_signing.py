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
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.policy import LocalPolicy
from agent.trust import Accepted, Refused, check
from fleetkeeper_common import signing
from reconciler.api.hub import DesiredHub
from reconciler.signing import DocumentSigner, load_or_create_key
from reconciler.store import open_store
from tests.helpers.fakereconciler import sign_batch, sign_doc

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


# A batch of three (the vector document first): the Merkle root of their signed bytes, and
# the first envelope, byte for byte (one signature, shared by all three envelopes).
BATCH_DOCS: list[dict[str, Any]] = [
    VECTOR_DOC,
    {"node": "gpu-2", "generation": 7},
    {"node": "gpu-3", "generation": 1},
]
BATCH_ROOT = "2f9bf99f4a274ebb9b71d3aa2b5b8534eea62ee912f21d9453530c2891a623a3"
BATCH_FIRST = (
    b'{"signatures":[{"keyid":"SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg",'
    b'"proof":{"index":0,"path":["eZcEnbrm3+yMfYkXxe5zQpRlceNO8cT2VzdZAbtDnlU=",'
    b'"kyMR/UkWvczHv2Bbj/NoJbUY9mkjDrKzFX3ZVYYT4L0="],"size":3},'
    b'"sig":"PGAo4u2Wa36vhm+wScVLH4OmBkPwmQgFPrGsmcdd21zTysiMbO5HFmH9EM4uNGRkV6mnFmtazpl75nP54wKWDA=="}],'
    b'"signed":' + VECTOR_BYTES + b"}"
)


def test_batch_vectors() -> None:
    from fleetkeeper_common import merkle

    bodies = [signing.canonical_bytes(d) for d in BATCH_DOCS]
    root, _ = merkle.tree([merkle.leaf_hash(signing.CONTEXT + b) for b in bodies])
    assert root.hex() == BATCH_ROOT
    envelopes = signing.batch_envelopes(KEY, VECTOR_KEYID, bodies)
    assert envelopes[0] == BATCH_FIRST
    trusted = signing.parse_public_keys(PUBLIC, "vector")
    for i, body in enumerate(envelopes):
        raw = json.loads(body)
        assert signing.canonical_bytes(raw) == body  # the spliced text is the canonical one
        envelope = signing.parse_envelope(raw)
        proof = envelope.signatures[0].proof
        assert proof is not None and (proof.index, proof.size) == (i, 3)
        assert signing.verify(envelope, trusted) == VECTOR_KEYID
    # what is signed: the batch context, the size as 8 bytes big-endian, the root
    sig = base64_of(json.loads(BATCH_FIRST)["signatures"][0]["sig"])
    KEY.public_key().verify(
        sig,
        b"fleetkeeper desired-state batch v1\n" + (3).to_bytes(8, "big") + root,
    )


def base64_of(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


ACCEPT_CASES: list[tuple[str, str | None]] = [
    ("application/vnd.fleetkeeper.signed+json; proofs=merkle", "batch"),
    ("application/vnd.fleetkeeper.signed+json;proofs=merkle", "batch"),
    ("application/json, application/vnd.fleetkeeper.signed+json; q=0.9; proofs=merkle", "batch"),
    ("application/vnd.fleetkeeper.signed+json", "single"),
    ("Application/Vnd.Fleetkeeper.Signed+JSON", "single"),
    ("application/json", None),
    ("", None),
    ("application/vnd.fleetkeeper.signed+jsonx; proofs=merkle", None),
]


@pytest.mark.parametrize(("accept", "want"), ACCEPT_CASES)
def test_accept_header_picks_the_form(accept: str, want: str | None) -> None:
    assert signing.accepted_form(accept) == want


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


def _batch(n: int = 5) -> list[dict[str, Any]]:
    return [
        json.loads(b)
        for b in sign_batch(KEY, [_doc(1, node=f"gpu-{i}") for i in range(1, n + 1)], issued=T0)
    ]


def _edit(envelope: dict[str, Any], change: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(envelope))
    change(out, out["signatures"][0])
    return out


def _flip_path(_: dict[str, Any], sig: dict[str, Any]) -> None:
    raw = bytearray(base64_of(sig["proof"]["path"][0]))
    raw[0] ^= 1
    import base64

    sig["proof"]["path"][0] = base64.b64encode(bytes(raw)).decode()


BATCH = _batch()
# (case, envelope as received by gpu-1, refusal text)
BATCH_ATTACKS: list[tuple[str, dict[str, Any], str]] = [
    ("altered proof path", _edit(BATCH[0], _flip_path), "bad signature by trusted key"),
    (
        "another node's valid proof with gpu-1's document swapped in",
        _edit(BATCH[1], lambda env, _: env.update(signed={**BATCH[1]["signed"], "node": "gpu-1"})),
        "over a batch of 5: the document, its inclusion proof or the signature was altered",
    ),
    (
        "batch signature relabelled as the single form",
        _edit(BATCH[0], lambda _, sig: sig.pop("proof")),
        "bad signature by trusted key",
    ),
    (
        "single signature relabelled as a batch of one",
        _edit(
            _signed(_doc(1)),  # type: ignore[arg-type]
            lambda _, sig: sig.update(proof={"index": 0, "size": 1, "path": []}),
        ),
        "over a batch of 1",
    ),
    (
        "another index",
        _edit(BATCH[0], lambda _, sig: sig["proof"].update(index=1)),
        "bad signature by trusted key",
    ),
    (
        "another size",
        _edit(BATCH[0], lambda _, sig: sig["proof"].update(size=6)),
        "over a batch of 6",
    ),
    (
        "a path too short for its tree",
        _edit(BATCH[0], lambda _, sig: sig["proof"]["path"].pop()),
        "bad inclusion proof for trusted key",
    ),
    (
        "an index outside the batch",
        _edit(BATCH[0], lambda _, sig: sig["proof"].update(index=5)),
        "bad inclusion proof for trusted key",
    ),
    (
        "a path entry that is no hash",
        _edit(BATCH[0], lambda _, sig: sig["proof"]["path"].__setitem__(0, "AAAA")),
        "bad inclusion proof: signatures[0].proof.path[0] is not a base64 SHA-256 hash",
    ),
    (
        "a size that is no integer",
        _edit(BATCH[0], lambda _, sig: sig["proof"].update(size=True)),
        "bad inclusion proof: signatures[0].proof.size is not an integer",
    ),
]


def test_a_batch_signed_document_is_accepted() -> None:
    for envelope in BATCH:
        node = envelope["signed"]["node"]
        got = check(envelope, node=node, trusted=TRUSTED, last=None, policy=LocalPolicy(), now=T0)
        assert isinstance(got, Accepted) and got.document["node"] == node, got


@pytest.mark.parametrize(("case", "raw", "want"), BATCH_ATTACKS, ids=[c[0] for c in BATCH_ATTACKS])
def test_batch_attacks_are_refused(case: str, raw: dict[str, Any], want: str) -> None:
    got = check(raw, node="gpu-1", trusted=TRUSTED, last=None, policy=LocalPolicy(), now=T0)
    assert isinstance(got, Refused) and want in got.reason, got


def old_verify(body: bytes) -> dict[str, Any]:
    """The single form checked as an agent of the previous release checks it: exactly
    keyid and sig, Ed25519 over the context and the canonical bytes, nothing else."""
    import base64

    envelope = json.loads(body)
    (sig,) = envelope["signatures"]
    assert set(sig) == {"keyid", "sig"}
    KEY.public_key().verify(
        base64.b64decode(sig["sig"]),
        b"fleetkeeper desired-state v1\n" + signing.canonical_bytes(envelope["signed"]),
    )
    return dict(envelope["signed"])


def test_hub_signs_a_chunk_once_and_gives_old_agents_the_single_form(tmp_path: Path) -> None:
    from reconciler.api.hub import PUBLISH_CHUNK

    batches: list[int] = []

    class Counting(DocumentSigner):
        def sign_many(self, documents: Any, now: float) -> Any:
            batches.append(len(documents))
            return super().sign_many(documents, now)

    now = [T0]
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    try:
        nodes = [f"n{i:03d}" for i in range(PUBLISH_CHUNK + 44)]
        stored = [r for r, _ in store.put_desired_many({n: _doc(1, node=n) for n in nodes})]
        hub = DesiredHub(store, (), Counting(KEY, 3600), clock=lambda: now[0])
        hub.publish_from_thread(stored)  # not serving yet: installed at once
        assert batches == [PUBLISH_CHUNK, 44]  # one Ed25519 signature per chunk
        first, last = hub.get(nodes[0]), hub.get(nodes[-1])
        assert first.signed is not None and last.signed is not None
        raw = json.loads(first.signed.body)
        assert raw["signatures"][0]["proof"]["size"] == PUBLISH_CHUNK
        assert len(raw["signatures"][0]["proof"]["path"]) == 8
        same = json.loads(hub.get(nodes[1]).signed.body)  # type: ignore[union-attr]
        assert same["signatures"][0]["sig"] == raw["signatures"][0]["sig"]
        assert json.loads(last.signed.body)["signatures"][0]["proof"]["size"] == 44
        for n in (nodes[0], nodes[-1]):
            got = check(
                _loads(hub.get(n).signed.body),  # type: ignore[union-attr]
                node=n,
                trusted=TRUSTED,
                last=None,
                policy=LocalPolicy(),
                now=now[0],
            )
            assert isinstance(got, Accepted), got

        # an agent of the previous release: the single form of the same signed document,
        # made on its first request and kept with the entry
        single = hub.envelope(nodes[0], first, "single")
        assert old_verify(single) == raw["signed"]
        assert hub.get(nodes[0]).single is single
        assert hub.envelope(nodes[0], hub.get(nodes[0]), "single") is single
        assert hub.envelope(nodes[0], hub.get(nodes[0]), "batch") == first.signed.body
        assert hub.get(nodes[0]).etag == first.etag  # either form, one ETag

        # a refresh is a batch of one: a new ETag, and a new single form on request
        now[0] = first.signed.refresh_at
        refreshed = hub.get(nodes[0])
        assert batches[-1] == 1 and refreshed.etag != first.etag and refreshed.single is None
        assert refreshed.signed is not None
        assert json.loads(refreshed.signed.body)["signatures"][0]["proof"]["path"] == []
        again = old_verify(hub.envelope(nodes[0], refreshed, "single"))
        assert again["issuedAt"] > raw["signed"]["issuedAt"]
    finally:
        store.close()


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


@settings(max_examples=60, deadline=None)
@given(size=st.integers(1, 40), data=st.data())
def test_every_envelope_of_a_batch_verifies_and_no_other_document_does(
    size: int, data: st.DataObject
) -> None:
    docs = [{"node": f"n{i}", "generation": i} for i in range(size)]
    bodies = [signing.canonical_bytes(d) for d in docs]
    envelopes = [json.loads(b) for b in signing.batch_envelopes(KEY, VECTOR_KEYID, bodies)]
    for envelope in envelopes:
        assert signing.verify(signing.parse_envelope(envelope), TRUSTED) == VECTOR_KEYID
    i = data.draw(st.integers(0, size - 1), label="index")
    # another document of the batch (or one never signed) under this document's proof
    j = data.draw(st.integers(0, size), label="other")
    other = docs[j] if j < size else {"node": f"n{i}", "generation": -1}
    if other != docs[i]:
        forged = {**envelopes[i], "signed": other}
        with pytest.raises(signing.SignatureRefused, match="over a batch of"):
            signing.verify(signing.parse_envelope(forged), TRUSTED)
