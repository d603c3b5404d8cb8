"""Raw Git objects: their ids, and the parts of tags, commits and trees (pure).

What the agent needs to check an approver's signature without a Git library: an object's
id is ``sha1(b"<type> <len>\\0" + body)`` (SHA-1 object format, Git's default; a SHA-256
repository is not supported), so a chain of raw objects proves itself: the tag names the
commit's id, the commit the root tree's, each tree its entries' ids.

Signed bytes, as Git signs them:

- a tag: the object up to the signature block that ends its message (the last line that
  starts with ``-----BEGIN``); ``git tag -s`` appends the signature there;
- a commit: the object without its ``gpgsig`` header (and that header's continuation
  lines); the header's value is the signature. Git uses ``gpgsig`` for SSH signatures too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

ObjectType = Literal["blob", "tree", "commit", "tag"]
OBJECT_TYPES: tuple[ObjectType, ...] = ("blob", "tree", "commit", "tag")
TREE_MODE = "40000"
FILE_MODES = frozenset({"100644", "100755"})  # a regular file (executable or not)


class ObjectError(ValueError):
    """A raw object is malformed; the message says which part."""


def object_id(kind: str, body: bytes) -> str:
    """The id Git gives ``body`` stored as an object of type ``kind`` (hex SHA-1)."""
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


@dataclass(frozen=True)
class Signed:
    """The bytes a signature covers and the signature (ASCII-armored)."""

    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class Tag:
    object: str
    type: str
    name: str
    signed: Signed | None


@dataclass(frozen=True)
class Commit:
    tree: str
    parents: tuple[str, ...]
    signed: Signed | None


@dataclass(frozen=True)
class TreeEntry:
    mode: str
    name: bytes
    id: str


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) of the header lines before the first empty line; continuation lines
    (starting with a space) are joined to their header's value with newlines."""
    head = body.split(b"\n\n", 1)[0]
    out: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line.startswith(b" ") and out:
            key, value = out[-1]
            out[-1] = (key, value + b"\n" + line[1:])
            continue
        key, sep, value = line.partition(b" ")
        if not sep:
            raise ObjectError(f"header line {line[:40]!r} has no value")
        out.append((key, value))
    return out


def _one(headers: list[tuple[bytes, bytes]], key: bytes, what: str) -> str:
    values = [v for k, v in headers if k == key]
    if len(values) != 1:
        raise ObjectError(f"{what} has {len(values)} '{key.decode()}' headers, not one")
    return values[0].decode("utf-8", "replace")


def _hex_id(value: str, what: str) -> str:
    if len(value) != 40 or any(c not in "0123456789abcdef" for c in value):
        raise ObjectError(f"{what} is not a SHA-1 object id")
    return value


def split_tag_signature(body: bytes) -> Signed | None:
    """The payload and signature of a tag object (None: it carries no signature)."""
    at, pos = -1, 0
    while (i := body.find(b"-----BEGIN ", pos)) >= 0:
        if i == 0 or body[i - 1 : i] == b"\n":
            at = i
        pos = i + 1
    if at < 0:
        return None
    return Signed(body[:at], body[at:])


def parse_tag(body: bytes) -> Tag:
    headers = _headers(body)
    target = _hex_id(_one(headers, b"object", "tag"), "tag's object")
    return Tag(
        object=target,
        type=_one(headers, b"type", "tag"),
        name=_one(headers, b"tag", "tag"),
        signed=split_tag_signature(body),
    )


def parse_commit(body: bytes) -> Commit:
    headers = _headers(body)
    tree = _hex_id(_one(headers, b"tree", "commit"), "commit's tree")
    parents = tuple(_hex_id(v.decode(), "commit's parent") for k, v in headers if k == b"parent")
    sigs = [v for k, v in headers if k == b"gpgsig"]
    if len(sigs) > 1:
        raise ObjectError("commit has more than one 'gpgsig' header")
    signed = None
    if sigs:
        signed = Signed(_without_gpgsig(body), sigs[0] + b"\n")
    return Commit(tree, parents, signed)


def _without_gpgsig(body: bytes) -> bytes:
    """The commit as it was before ``git commit -S`` inserted its signature header."""
    head, sep, message = body.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line.startswith(b"gpgsig "):
            skipping = True
            continue
        if skipping and line.startswith(b" "):
            continue
        skipping = False
        kept.append(line)
    return b"\n".join(kept) + sep + message


def parse_tree(body: bytes) -> list[TreeEntry]:
    """Entries ``<octal mode> <name>\\0<20-byte id>``, in stored order."""
    out: list[TreeEntry] = []
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        nul = body.find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > len(body):
            raise ObjectError(f"tree entry at byte {pos} is truncated")
        mode = body[pos:space].decode("ascii", "replace")
        out.append(TreeEntry(mode, body[space + 1 : nul], body[nul + 1 : nul + 21].hex()))
        pos = nul + 21
    return out
