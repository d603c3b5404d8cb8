"""Approval evidence: does each workload come from a file an approver signed? (pure)

With ``approvers`` in the agent config, a desired-state document must carry, for every
workload, the raw Git objects that prove its release (or model) file was approved::

    "evidence": {
      "objects": [{"type": "tag" | "commit" | "tree" | "blob", "data": "<base64>"}, ...],
      "workloads": {"<workload name>": "<id of the signed tag or signed commit>"}
    }

``chains`` recomputes every object's id from its bytes (``fleetkeeper_common.gitobjects``;
no id is taken from the sender), follows tag -> commit -> root tree -> ... ->
``releases/<name>/<version>.yaml`` (``models/`` for a model), reads that blob, and
re-renders the workload entry it implies for this node's name, labels and platform
(``fleetkeeper_common.fleetfile``): the entry in the document must be exactly that (only
``notBefore``, a rollout's start delay, is the reconciler's own). That includes ``config``
(each file's bytes, placeholders filled for this node when it is a template, and the
digest) and ``secrets`` (the age ciphertext the agent will decrypt with its own identity):
each ``from`` is followed through the same approved tree to its blob, so a file the tree
does not hold, or whose blob is missing from the evidence, is refused by name. What is left
for the I/O shell is the signature check of each distinct signed object (``agent.approvers``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetkeeper_common import gitobjects as g
from fleetkeeper_common.fleetfile import FleetFileError, load_strict, release_path, workload_entry

MAX_OBJECTS = 10_000
_RECONCILER_FIELDS = frozenset({"notBefore"})  # scheduling only: never changes what runs


@dataclass(frozen=True)
class Claim:
    """A signature to check: ``what`` names it in a refusal ("tag deploy/7 (1a2b3c4d5e6f)")."""

    what: str
    signed: g.Signed


class EvidenceRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _objects(raw: object) -> dict[str, tuple[str, bytes]]:
    if not isinstance(raw, list) or len(raw) > MAX_OBJECTS:
        raise EvidenceRefused("evidence.objects is not a list of at most 10000 objects")
    out: dict[str, tuple[str, bytes]] = {}
    for i, item in enumerate(raw):
        kind = item.get("type") if isinstance(item, dict) else None
        data = item.get("data") if isinstance(item, dict) else None
        if kind not in g.OBJECT_TYPES or not isinstance(data, str):
            raise EvidenceRefused(f"evidence.objects[{i}] needs a git object type and data")
        try:
            body = base64.b64decode(data, validate=True)
        except binascii.Error:
            raise EvidenceRefused(f"evidence.objects[{i}].data is not base64") from None
        out[g.object_id(str(kind), body)] = (str(kind), body)
    return out


def _get(objects: Mapping[str, tuple[str, bytes]], oid: str, kind: str, where: str) -> bytes:
    found = objects.get(oid)
    if found is None:
        raise EvidenceRefused(f"{where}: {kind} {oid[:12]} is not in the evidence")
    if found[0] != kind:
        raise EvidenceRefused(f"{where}: object {oid[:12]} is a {found[0]}, not a {kind}")
    return found[1]


def _file(objects: Mapping[str, tuple[str, bytes]], tree: str, path: str, where: str) -> bytes:
    """The bytes of the regular file at ``path`` in ``tree``, following the tree objects."""
    parts = path.split("/")
    for depth, part in enumerate(parts):
        try:
            entries = g.parse_tree(_get(objects, tree, "tree", where))
        except g.ObjectError as exc:
            raise EvidenceRefused(f"{where}: {exc}") from None
        entry = next((e for e in entries if e.name == part.encode()), None)
        so_far = "/".join(parts[: depth + 1])
        if entry is None:
            raise EvidenceRefused(f"{where}: the approved tree has no {path}")
        last = depth == len(parts) - 1
        if not last and entry.mode != g.TREE_MODE:
            raise EvidenceRefused(f"{where}: {so_far} in the approved tree is not a folder")
        if last and entry.mode not in g.FILE_MODES:
            raise EvidenceRefused(f"{where}: {path} in the approved tree is not a regular file")
        tree = entry.id
    return _get(objects, tree, "blob", where)


def _approved_commit(
    objects: Mapping[str, tuple[str, bytes]], start: str, where: str
) -> tuple[Claim, g.Commit]:
    kind = objects[start][0] if start in objects else "missing"
    try:
        if kind == "tag":
            tag = g.parse_tag(objects[start][1])
            if tag.type != "commit":
                raise EvidenceRefused(f"{where}: tag {tag.name} does not point at a commit")
            if tag.signed is None:
                raise EvidenceRefused(f"{where}: tag {tag.name} is not signed")
            commit = g.parse_commit(_get(objects, tag.object, "commit", where))
            return Claim(f"tag {tag.name} ({start[:12]})", tag.signed), commit
        if kind == "commit":
            commit = g.parse_commit(objects[start][1])
            if commit.signed is None:
                raise EvidenceRefused(f"{where}: commit {start[:12]} is not signed")
            return Claim(f"commit {start[:12]}", commit.signed), commit
    except g.ObjectError as exc:
        raise EvidenceRefused(f"{where}: {exc}") from None
    raise EvidenceRefused(f"{where}: approval {start[:12]} is not a tag or commit in the evidence")


def differing_fields(told: Mapping[str, Any], approved: Mapping[str, Any]) -> list[str]:
    """Names of the workload fields where the document departs from the approved file
    (names only: values may be secrets)."""
    keys = (set(told) | set(approved)) - _RECONCILER_FIELDS
    out: list[str] = []
    for k in sorted(keys):
        a, b = told.get(k), approved.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(f"{k}.{s}" for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s))
        else:
            out.append(k)
    return out


def chains(
    document: Mapping[str, Any], *, node: str, labels: Mapping[str, str], platform: str
) -> list[Claim]:
    """The signatures left to check once every workload is shown to come, field for field,
    from a file in a signed tree; EvidenceRefused names the first workload that is not."""
    workloads = [w for w in document.get("workloads") or [] if isinstance(w, dict)]
    if not workloads:
        return []
    evidence = document.get("evidence")
    if not isinstance(evidence, dict):
        raise EvidenceRefused("no approval evidence in the document (approvers are set)")
    objects = _objects(evidence.get("objects"))
    starts = evidence.get("workloads")
    if not isinstance(starts, dict):
        raise EvidenceRefused("evidence.workloads is not an object")
    claims: dict[bytes, Claim] = {}
    for w in workloads:
        name = str(w.get("name"))
        where = f"workload {name[:64]!r}"
        start = starts.get(name)
        if not isinstance(start, str):
            raise EvidenceRefused(f"{where}: no approval evidence")
        claim, commit = _approved_commit(objects, start, where)
        path = release_path(str(w.get("kind")), name, str(w.get("version")))
        data = _file(objects, commit.tree, path, where)
        try:
            approved = load_strict(data, path)
        except FleetFileError as exc:
            raise EvidenceRefused(f"{where}: {exc}") from None
        if not isinstance(approved, dict):
            raise EvidenceRefused(f"{where}: {path} is not a mapping")

        def read(src: str, tree: str = commit.tree, where: str = where) -> bytes:
            # a config file or an age ciphertext the entry carries: from the same signed tree
            return _file(objects, tree, src, where)

        try:
            expect = workload_entry(approved, node, labels, platform, read)
        except FleetFileError as exc:
            raise EvidenceRefused(f"{where}: {path}: {exc}") from None
        if expect is None:
            raise EvidenceRefused(f"{where}: {path} has no artifact for {platform}")
        diff = differing_fields(w, expect)
        if diff:
            raise EvidenceRefused(
                f"{where}: {', '.join(diff[:6])} differ from the approved {path} "
                f"(as resolved for node {node!r} and its labels)"
            )
        claims.setdefault(claim.signed.payload + claim.signed.signature, claim)
    return list(claims.values())
