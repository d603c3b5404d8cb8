"""Signed desired-state documents: the canonical bytes, the envelope, Ed25519 sign/verify.

Both halves import this (the reconciler signs, the agent verifies), so both compute the same
bytes from the same value; ``tests/unit/test_signing_vectors.py`` pins them.

Envelope (served for ``Accept: application/vnd.fleetkeeper.signed+json``; a plain document
otherwise, so an old agent keeps working and a new one can tell the forms apart)::

    {"signed": {...desired-state document, with issuedAt and expiresAt...},
     "signatures": [{"keyid": "SHA256:<ssh-keygen -l fingerprint>", "sig": "<base64>"}]}

Signed bytes: ``CONTEXT`` + canonical JSON of ``signed`` (keys sorted, no spaces, non-ASCII
as ``\\uXXXX`` escapes, so the text is ASCII; no floats in a document). The context prefix
keeps a signature made for this purpose from being valid for any other.

Batch form (served for ``Accept: application/vnd.fleetkeeper.signed+json; proofs=merkle``,
which agents since batch signing send): the reconciler signs a fan-out's documents 256 at a
time with one Ed25519 signature over the RFC 9162 Merkle root of their signed bytes (as
Certificate Transparency signs a log), and each envelope's signature carries the document's
inclusion proof::

    {"keyid": ..., "proof": {"index": i, "path": ["<base64 SHA-256>", ...], "size": n},
     "sig": "<base64 signature of BATCH_CONTEXT + n as 8 bytes big-endian + root>"}

The leaf is the single form's signed bytes (``CONTEXT`` + canonical JSON); its own context
string keeps a batch signature from passing as a single one and the other way round. One
signature per 256 documents instead of one each: 10,000 documents take 40 Ed25519
signatures (~1.5 ms) instead of 10,000 (~0.34 s, holding the GIL) (``bench/signing.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetkeeper_common import merkle
from fleetkeeper_common.canonical import fast_bytes

ENVELOPE_TYPE = "application/vnd.fleetkeeper.signed+json"
PROOFS_PARAMETER = "proofs=merkle"
BATCH_TYPE = f"{ENVELOPE_TYPE}; {PROOFS_PARAMETER}"
CONTEXT = b"fleetkeeper desired-state v1\n"
BATCH_CONTEXT = b"fleetkeeper desired-state batch v1\n"
MAX_PATH = 64  # hashes in an inclusion path: a batch of up to 2**64 documents

Form = Literal["single", "batch"]


class SignatureRefused(Exception):
    """The envelope is malformed or no trusted key signed it; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Proof:
    """Where the document is in the signed batch: RFC 9162's inclusion proof."""

    index: int
    size: int
    path: tuple[bytes, ...]


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes
    proof: Proof | None = None  # None: the single form, a signature over this document


@dataclass(frozen=True)
class Envelope:
    signed: Mapping[str, object]
    signatures: tuple[Signature, ...]


def canonical_bytes(value: object) -> bytes:
    """The one byte form of a JSON value that is signed and verified (``fast_bytes`` when
    it gives the same bytes: the reconciler encodes a fleet's documents per fan-out)."""
    out = fast_bytes(value)
    if out is not None:
        return out
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def public_line(key: Ed25519PublicKey) -> str:
    """``ssh-ed25519 AAAA...`` as an OpenSSH ``.pub`` file or authorized_keys line holds it."""
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def keyid(key: Ed25519PublicKey) -> str:
    """The key's fingerprint as ``ssh-keygen -l`` prints it (``SHA256:`` + unpadded base64)."""
    blob = base64.b64decode(public_line(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def sign(key: Ed25519PrivateKey, signed: Mapping[str, object]) -> dict[str, object]:
    """The envelope of ``signed`` with one signature by ``key``."""
    sig = key.sign(CONTEXT + canonical_bytes(signed))
    return {
        "signed": dict(signed),
        "signatures": [{"keyid": keyid(key.public_key()), "sig": base64.b64encode(sig).decode()}],
    }


def envelope_bytes(key: Ed25519PrivateKey, key_id: str, signed: Mapping[str, object]) -> bytes:
    """``canonical_bytes(sign(key, signed))`` without serializing ``signed`` twice: the
    envelope's keys sort as ``signatures`` < ``signed``, so its canonical text is the signed
    bytes spliced in (the reconciler signs a fleet's documents on every fan-out)."""
    return single_envelope(key, key_id, canonical_bytes(signed))


def single_envelope(key: Ed25519PrivateKey, key_id: str, body: bytes) -> bytes:
    """The single-signature envelope of ``body``, the canonical bytes of a signed document."""
    sig = base64.b64encode(key.sign(CONTEXT + body))
    head = b'{"signatures":[{"keyid":' + json.dumps(key_id).encode() + b',"sig":"'
    return head + sig + b'"}],"signed":' + body + b"}"


def batch_message(size: int, root: bytes) -> bytes:
    """What a batch signature signs: the tree's size and root, under their own context."""
    return BATCH_CONTEXT + size.to_bytes(8, "big") + root


def batch_envelopes(key: Ed25519PrivateKey, key_id: str, bodies: Sequence[bytes]) -> list[bytes]:
    """The batch-form envelopes of ``bodies`` (canonical bytes of signed documents, in
    order): one signature over their Merkle root, each envelope with its own proof; the
    canonical text of each envelope, spliced as ``single_envelope`` does."""
    root, paths = merkle.tree([merkle.leaf_hash(CONTEXT + body) for body in bodies])
    size = str(len(bodies)).encode()
    sig = base64.b64encode(key.sign(batch_message(len(bodies), root)))
    head = b'{"signatures":[{"keyid":' + json.dumps(key_id).encode() + b',"proof":{"index":'
    tail = b'],"size":' + size + b'},"sig":"' + sig + b'"}],"signed":'
    # each inner hash is on many paths: encoded once; one join copies each body once
    quoted: dict[bytes, bytes] = {}
    out = []
    for i, (body, path) in enumerate(zip(bodies, paths, strict=True)):
        hashes = []
        for h in path:
            q = quoted.get(h)
            if q is None:
                q = quoted[h] = b'"' + base64.b64encode(h) + b'"'
            hashes.append(q)
        out.append(
            b"".join((head, str(i).encode(), b',"path":[', b",".join(hashes), tail, body, b"}"))
        )
    return out


def accepted_form(accept: str) -> Form | None:
    """Which envelope an ``Accept`` header asks for: ``"batch"`` (with ``proofs=merkle``),
    ``"single"``, or None (the plain document, for clients that do not verify)."""
    form: Form | None = None
    for media_range in accept.split(","):
        kind, *params = (part.strip().lower() for part in media_range.split(";"))
        if kind == ENVELOPE_TYPE:
            if PROOFS_PARAMETER in (p.replace(" ", "") for p in params):
                return "batch"
            form = "single"
    return form


def parse_envelope(raw: object) -> Envelope:
    """The envelope's parts, or SignatureRefused naming what is missing or malformed."""
    if not isinstance(raw, dict) or "signed" not in raw:
        raise SignatureRefused("unsigned document (no signature envelope)")
    signed, sigs = raw.get("signed"), raw.get("signatures")
    if not isinstance(signed, dict):
        raise SignatureRefused("envelope: 'signed' is not an object")
    if not isinstance(sigs, list) or not sigs:
        raise SignatureRefused("envelope: no signatures")
    out = []
    for i, item in enumerate(sigs):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("keyid"), str)
            and isinstance(item.get("sig"), str)
        ):
            raise SignatureRefused(f"envelope: signatures[{i}] needs string keyid and sig")
        try:
            sig = base64.b64decode(item["sig"], validate=True)
        except binascii.Error:
            raise SignatureRefused(f"envelope: signatures[{i}].sig is not base64") from None
        proof = _proof(item["proof"], i) if "proof" in item else None
        out.append(Signature(item["keyid"], sig, proof))
    return Envelope(signed, tuple(out))


def _proof(raw: object, i: int) -> Proof:
    where = f"bad inclusion proof: signatures[{i}].proof"
    if not isinstance(raw, dict):
        raise SignatureRefused(f"{where} is not an object")
    index, size, path = raw.get("index"), raw.get("size"), raw.get("path")
    for name, value in (("index", index), ("size", size)):
        # bool is an int to Python, never to JSON Schema
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
            raise SignatureRefused(f"{where}.{name} is not an integer in [0, 2**63)")
    if not isinstance(path, list) or len(path) > MAX_PATH:
        raise SignatureRefused(f"{where}.path is not a list of at most {MAX_PATH} hashes")
    hashes = []
    for n, h in enumerate(path):
        try:
            digest = base64.b64decode(h, validate=True) if isinstance(h, str) else b""
        except binascii.Error:
            digest = b""
        if len(digest) != merkle.HASH_SIZE:
            raise SignatureRefused(f"{where}.path[{n}] is not a base64 SHA-256 hash")
        hashes.append(digest)
    assert isinstance(index, int) and isinstance(size, int)
    return Proof(index, size, tuple(hashes))


def verify(envelope: Envelope, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """The keyid of a trusted key whose signature over ``signed`` verifies, else refused.

    Single form: the signature over the signed bytes. Batch form: the inclusion proof
    recomputes the batch's root from the signed bytes (RFC 9162 §2.1.3.2), and the
    signature over that root and the batch's size must verify."""
    message = CONTEXT + canonical_bytes(envelope.signed)
    for s in envelope.signatures:
        key = trusted.get(s.keyid)
        if key is None:
            continue
        p = s.proof
        signed_message = message
        if p is not None:
            root = merkle.root_from_path(p.index, p.size, merkle.leaf_hash(message), p.path)
            if root is None:
                raise SignatureRefused(
                    f"bad inclusion proof for trusted key {s.keyid}: index {p.index} of a "
                    f"batch of {p.size} with {len(p.path)} hashes is no path in that tree"
                )
            signed_message = batch_message(p.size, root)
        try:
            key.verify(s.sig, signed_message)
        except InvalidSignature:
            if p is None:
                raise SignatureRefused(f"bad signature by trusted key {s.keyid}") from None
            raise SignatureRefused(
                f"bad signature by trusted key {s.keyid} over a batch of {p.size}: the "
                "document, its inclusion proof or the signature was altered"
            ) from None
        return s.keyid
    # what the sender wrote, so bounded and printable before it reaches a log or report
    ids = ", ".join(
        "".join(c if c.isprintable() else "?" for c in s.keyid[:64])
        for s in envelope.signatures[:4]
    )
    raise SignatureRefused(f"signed by untrusted key {ids}")


def parse_public_keys(text: str, where: str) -> dict[str, Ed25519PublicKey]:
    """Ed25519 keys from OpenSSH public key lines (``#`` comments and blank lines skipped)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = serialization.load_ssh_public_key(line.encode())
        except (ValueError, TypeError, binascii.Error) as exc:
            raise ValueError(f"{where}:{n}: not an OpenSSH public key line: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{where}:{n}: not an ssh-ed25519 key")
        keys[keyid(key)] = key
    return keys
