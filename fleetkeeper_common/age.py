"""The age format (age-encryption.org/v1) through pyrage: one typed seam for the agent and
the reconciler's authoring commands, so neither imports the untyped extension directly.

Only X25519 recipients (``age1...``) are used: the node's own identity, and operators'
keys from ``fleet.yaml``. Ciphertext is written ASCII-armored (it lives in Git, and a diff
or a review tool shows it as text); both armored and binary input are decrypted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyrage

ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
BINARY_MAGIC = b"age-encryption.org/v1\n"


class AgeError(Exception):
    """An age operation failed; the message says which and why (never any plain text)."""


class NotARecipient(AgeError):
    """The identity is not among the file's recipients."""


@dataclass(frozen=True)
class Identity:
    secret: str  # AGE-SECRET-KEY-1...: never logged
    recipient: str  # age1...

    def __repr__(self) -> str:  # a dataclass repr would print the secret key
        return f"Identity(recipient={self.recipient!r})"


def generate_identity() -> Identity:
    ident = pyrage.x25519.Identity.generate()
    return Identity(str(ident), str(ident.to_public()))


def parse_identity(text: str) -> Identity:
    """The first ``AGE-SECRET-KEY-1`` line of an identity file (age-keygen's format:
    ``#`` comment lines are skipped)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                ident = pyrage.x25519.Identity.from_str(line)
            except pyrage.IdentityError as exc:
                raise AgeError(f"not an age X25519 identity: {exc}") from exc
            return Identity(line, str(ident.to_public()))
    raise AgeError("no AGE-SECRET-KEY-1 line")


def recipient_problem(text: str) -> str | None:
    """None when ``text`` is an age X25519 recipient, else why it is not."""
    if not text.startswith("age1"):
        return "an age X25519 recipient starts with age1"
    try:
        pyrage.x25519.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        return str(exc)
    return None


def encrypt(plain: bytes, recipients: Iterable[str]) -> bytes:
    """``plain`` encrypted to every recipient, ASCII-armored."""
    parsed = []
    for r in recipients:
        problem = recipient_problem(r)
        if problem is not None:
            raise AgeError(f"recipient {r!r}: {problem}")
        parsed.append(pyrage.x25519.Recipient.from_str(r))
    if not parsed:
        raise AgeError("no recipients to encrypt to")
    try:
        return bytes(pyrage.encrypt(plain, parsed, armored=True))
    except pyrage.EncryptError as exc:
        raise AgeError(f"encryption failed: {exc}") from exc


def is_age_file(data: bytes) -> bool:
    head = data.lstrip()[:64]
    return head.startswith((ARMOR_BEGIN, BINARY_MAGIC))


def decrypt(cipher: bytes, identity: Identity) -> bytes:
    """Raises NotARecipient when ``identity`` is not one of the file's recipients."""
    try:
        ident = pyrage.x25519.Identity.from_str(identity.secret)
        return bytes(pyrage.decrypt(cipher, [ident]))
    except pyrage.DecryptError as exc:
        if "No matching keys" in str(exc):
            raise NotARecipient("this node is not a recipient") from exc
        raise AgeError(f"not a valid age file: {exc}") from exc
