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
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetkeeper_common.canonical import fast_bytes

ENVELOPE_TYPE = "application/vnd.fleetkeeper.signed+json"
CONTEXT = b"fleetkeeper desired-state v1\n"


class SignatureRefused(Exception):
    """The envelope is malformed or no trusted key signed it; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes


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
    body = canonical_bytes(signed)
    sig = base64.b64encode(key.sign(CONTEXT + body))
    head = b'{"signatures":[{"keyid":' + json.dumps(key_id).encode() + b',"sig":"'
    return head + sig + b'"}],"signed":' + body + b"}"


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
        out.append(Signature(item["keyid"], sig))
    return Envelope(signed, tuple(out))


def verify(envelope: Envelope, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """The keyid of a trusted key whose signature over ``signed`` verifies, else refused."""
    message = CONTEXT + canonical_bytes(envelope.signed)
    for s in envelope.signatures:
        key = trusted.get(s.keyid)
        if key is None:
            continue
        try:
            key.verify(s.sig, message)
        except InvalidSignature:
            raise SignatureRefused(f"bad signature by trusted key {s.keyid}") from None
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
