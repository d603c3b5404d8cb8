"""Approval evidence for desired-state documents: the raw Git objects an agent checks.

For each workload of a document: the signed object that approved its revision (the
annotated tag named by ``approval.ref`` in signed-tag mode, when it points straight at the
revision; else the revision's commit when it carries a signature, as a signed merge or a
forge-signed squash does), the commit, the trees from the root down to
``releases/<name>/<version>.yaml`` (or ``models/``), and that file; and when the workload
carries ``config`` or ``secrets``, the same walk down to each file that release file names
(``config.files[].from``, ``secrets[].from``: the node compares the bytes it is told to
write with those blobs). Without a signature there is nothing an agent can check, and no
evidence is attached: an agent with ``approvers`` set refuses such a document
(``docs/security.md``).

I/O at the edge: reads the repository with its own pygit2 handle (under a lock; the
reconcile loop's handle is its own). Objects are content-addressed, so what was read for a
(signed object, path) is cached for good; a 10,000-node fan-out reads each file once.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Mapping
from typing import Any

import pygit2

from fleetkeeper_common.fleetfile import (
    FleetFileError,
    load_strict,
    referenced_files,
    release_path,
)
from fleetkeeper_common.gitobjects import split_tag_signature

log = logging.getLogger(__name__)

_CACHE_MAX = 100_000
Obj = tuple[str, str, str]  # (id, type, raw body as base64): encoded once, sent to many


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class EvidenceSource:
    """``evidence(document)`` -> the document's ``evidence`` block, or None."""

    def __init__(self, repo_path: str) -> None:
        self._path = repo_path
        self._repo: pygit2.Repository | None = None
        self._lock = threading.Lock()
        self._chains: dict[tuple[str, str, bool], tuple[Obj, ...] | None] = {}
        self._signed: dict[tuple[str, str], str | None] = {}
        self._refs: dict[str, tuple[str, ...]] = {}
        self._unsupported = False

    def __call__(self, document: Mapping[str, Any]) -> dict[str, Any] | None:
        workloads = document.get("workloads") or []
        revision, approval = document.get("revision"), document.get("approval")
        if not workloads or not isinstance(revision, str) or not isinstance(approval, dict):
            return None
        try:
            with self._lock:
                return self._evidence(workloads, revision, approval)
        except (KeyError, ValueError, pygit2.GitError) as exc:
            log.warning("no approval evidence for revision %s: %s", revision[:12], exc)
            return None

    def _open(self) -> pygit2.Repository:
        if self._repo is None:
            self._repo = pygit2.Repository(self._path)
            config = self._repo.config
            key = "extensions.objectformat"
            fmt = str(config[key]) if key in config else "sha1"
            if fmt != "sha1" and not self._unsupported:
                self._unsupported = True
                log.warning("repository uses %s objects: no approval evidence for agents", fmt)
        return self._repo

    def _evidence(
        self, workloads: list[Any], revision: str, approval: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        repo = self._open()
        if self._unsupported:
            return None
        signed = self._signed_object(repo, revision, str(approval.get("ref") or ""))
        if signed is None:
            return None
        objects: dict[str, Obj] = {}
        starts: dict[str, str] = {}
        for w in workloads:
            path = release_path(str(w.get("kind")), str(w.get("name")), str(w.get("version")))
            chain = self._chain(repo, signed, path)
            if chain is None:
                continue  # the file is not in that tree: the agent refuses, naming it
            found: list[tuple[Obj, ...] | None] = [chain]
            if "config" in w or "secrets" in w:
                refs = self._referenced(chain, path)
                found += [self._chain(repo, signed, p, partial=True) for p in refs]
            for c in found:
                for obj in c or ():  # a file the tree lacks: the agent refuses, naming it
                    objects.setdefault(obj[0], obj)
            starts[str(w.get("name"))] = signed
        if not starts:
            return None
        return {
            "objects": [{"type": t, "data": data} for _, t, data in objects.values()],
            "workloads": starts,
        }

    def _signed_object(self, repo: pygit2.Repository, revision: str, ref: str) -> str | None:
        """The id of the signed tag or signed commit that approves ``revision``."""
        key = (revision, ref)
        if key in self._signed:
            return self._signed[key]
        found: str | None = None
        if ref.startswith("refs/tags/") and ref in repo.references:
            target = repo.references[ref].target
            obj = repo[target]
            if (
                isinstance(obj, pygit2.Tag)
                and str(obj.target) == revision
                and split_tag_signature(obj.read_raw()) is not None
            ):
                found = str(obj.id)
        if found is None:
            commit = repo[revision].peel(pygit2.Commit)
            if commit.gpg_signature[0]:
                found = revision
        if len(self._signed) >= _CACHE_MAX:
            self._signed.clear()
        self._signed[key] = found
        return found

    def _referenced(self, chain: tuple[Obj, ...], path: str) -> tuple[str, ...]:
        """The config files and age ciphertexts the release file (the chain's last blob)
        names: their chains go into the evidence beside its own (cached by blob id)."""
        blob_id, _, data = chain[-1]
        if blob_id not in self._refs:
            try:
                doc = load_strict(base64.b64decode(data), path)
            except FleetFileError:
                doc = None  # the validator refused it already; the agent will too
            refs = tuple(referenced_files(doc)) if isinstance(doc, dict) else ()
            if len(self._refs) >= _CACHE_MAX:
                self._refs.clear()
            self._refs[blob_id] = refs
        return self._refs[blob_id]

    def _chain(
        self, repo: pygit2.Repository, signed: str, path: str, *, partial: bool = False
    ) -> tuple[Obj, ...] | None:
        """The objects from ``signed`` down to the blob at ``path``; None when the tree has
        no such file, unless ``partial``: then the trees walked, so the node can see for
        itself that the file is missing and say so by name."""
        key = (signed, path, partial)
        if key in self._chains:
            return self._chains[key]
        out: list[Obj] = []
        obj = repo[signed]
        if isinstance(obj, pygit2.Tag):
            out.append((signed, "tag", _b64(obj.read_raw())))
            obj = repo[obj.target]
        commit = obj.peel(pygit2.Commit)
        out.append((str(commit.id), "commit", _b64(commit.read_raw())))
        tree: pygit2.Object = commit.tree
        result: tuple[Obj, ...] | None = None
        parts = path.split("/")
        for i, part in enumerate(parts):
            if not isinstance(tree, pygit2.Tree):
                break  # a file where the path needs a folder
            out.append((str(tree.id), "tree", _b64(tree.read_raw())))
            if not part or part not in tree:
                break
            entry = tree[part]
            if i == len(parts) - 1:
                if isinstance(entry, pygit2.Blob):
                    out.append((str(entry.id), "blob", _b64(entry.read_raw())))
                    result = tuple(out)
                break
            tree = entry
        if result is None and partial:
            result = tuple(out)
        if len(self._chains) >= _CACHE_MAX:
            self._chains.clear()
        self._chains[key] = result
        return result
