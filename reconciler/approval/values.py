"""Approval values: the facts the decision reads and the results it returns.

Pure data: frozen dataclasses, no I/O. ``history`` and ``signatures`` gather the facts from
Git and from ssh-keygen/gpg; ``decide`` turns facts into an ``ApprovalResult``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from reconciler.spec import JSON

SignatureFormat = Literal["ssh", "openpgp", "none", "unknown"]
ApprovalKind = Literal["merge", "tag", "signed-commit", "baseline"]


@dataclass(frozen=True)
class Refusal:
    revision: str
    reason: str


@dataclass(frozen=True)
class AuditRecord:
    """One decision for the audit log; kinds: approved, refused, rollback, ignored,
    mismatch (a tag object placed under another ref name than the one it was signed as)."""

    kind: str
    message: str
    revision: str | None
    details: Mapping[str, JSON] = field(default_factory=dict)


@dataclass(frozen=True)
class ApprovalResult:
    revision: str | None  # newest approved commit, or the last applied one when nothing newer
    approval: Mapping[str, JSON] | None  # {"kind", "ref", "signers"}; None: nothing newer
    refused: tuple[Refusal, ...]
    audit: tuple[AuditRecord, ...]


@dataclass(frozen=True)
class Signature:
    """The verdict on one object's signature (pure per object, so cached by object sha)."""

    format: SignatureFormat
    valid: bool
    signer: str | None = None  # ssh principal, or the OpenPGP uid's email (else fingerprint)
    key: str | None = None  # key fingerprint as the verifier printed it
    detail: str = ""  # why it is not valid

    @staticmethod
    def unsigned() -> Signature:
        return Signature(format="none", valid=False, detail="not signed")


@dataclass(frozen=True)
class Change:
    """A fleet entry a commit changed relative to its first parent (None: absent).

    ``old``/``new`` identify the entry as "<mode> <blob id>": the same blob under another
    mode (a symlink, an executable) is another entry."""

    path: str
    old: str | None
    new: str | None


@dataclass(frozen=True)
class CommitFacts:
    sha: str
    parents: tuple[str, ...]
    time: int  # committer time, unix seconds
    summary: str  # first line of the message
    changes: tuple[Change, ...]  # fleet files only
    signature: Signature | None = None  # None: not looked at (not needed for the decision)

    @property
    def is_merge(self) -> bool:
        return len(self.parents) >= 2


@dataclass(frozen=True)
class TagFacts:
    name: str  # without refs/tags/
    target: str | None  # the commit it finally points at; None when not a commit
    annotated: bool
    time: int | None = None  # tagger time
    signature: Signature | None = None  # None when not annotated or outside the pattern
    tag_sha: str | None = None  # the tag object
    tagged_as: str | None = None  # the signed ``tag`` header inside the object


Relation = Literal["same", "descendant", "ancestor", "diverged", "unknown"]
