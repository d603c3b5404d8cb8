"""Facts from Git (pygit2): the first-parent chain, what each commit changed, tags, ancestry.

I/O at the edge: reads the repository, verifies signatures through ``signatures``, and
returns ``values`` for ``decide``. Commit and tag facts are pure per object, so they are
cached by object sha (a re-evaluation after one new merge reads one new commit).
"""

from __future__ import annotations

from collections.abc import Iterator

import pygit2

from reconciler.approval.signatures import SignedObject, Verifier, split_tag
from reconciler.approval.values import Change, CommitFacts, Relation, Signature, TagFacts
from reconciler.validate import is_fleet_file

_CACHE_MAX = 500_000
_commit_cache: dict[str, CommitFacts] = {}
_tag_cache: dict[str, tuple[str | None, int | None, bytes]] = {}


def _remember(cache: dict[str, CommitFacts], key: str, value: CommitFacts) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


def _oid(oid: pygit2.Oid) -> str | None:
    s = str(oid)
    return None if s == "0" * len(s) else s


def commit_facts(repo: pygit2.Repository, sha: str) -> CommitFacts:
    """What ``sha`` changed in fleet files relative to its first parent (all files: root)."""
    hit = _commit_cache.get(sha)
    if hit is not None:
        return hit
    commit = repo[sha].peel(pygit2.Commit)
    parents = tuple(str(p) for p in commit.parent_ids)
    if parents:
        diff = repo[parents[0]].peel(pygit2.Tree).diff_to_tree(commit.tree)
    else:
        diff = commit.tree.diff_to_tree(swap=True)
    changes: list[Change] = []
    for delta in diff.deltas:
        for path in {delta.old_file.path, delta.new_file.path}:
            if is_fleet_file(path):
                old = _oid(delta.old_file.id) if delta.old_file.path == path else None
                new = _oid(delta.new_file.id) if delta.new_file.path == path else None
                changes.append(Change(path, old, new))
    facts = CommitFacts(
        sha=sha,
        parents=parents,
        time=int(commit.commit_time),
        summary=(commit.message.splitlines() or [""])[0][:200],
        changes=tuple(sorted(changes, key=lambda c: c.path)),
    )
    _remember(_commit_cache, sha, facts)
    return facts


def commit_signature(repo: pygit2.Repository, sha: str, verifier: Verifier) -> Signature:
    commit = repo[sha].peel(pygit2.Commit)
    signature, payload = commit.gpg_signature
    if not signature:
        return Signature.unsigned()
    return verifier.verify(SignedObject(sha, payload, signature, int(commit.commit_time)))


def first_parent_chain(repo: pygit2.Repository, tip: str, stop: str | None) -> Iterator[str]:
    """The first-parent chain from ``tip`` back to (not including) ``stop``, newest first.

    ``stop`` and everything reachable from it are hidden, so the chain ends there.
    """
    walker = repo.walk(tip, pygit2.enums.SortMode.NONE)
    walker.simplify_first_parent()
    if stop is not None:
        walker.hide(stop)
    for commit in walker:
        yield str(commit.id)


def contains(repo: pygit2.Repository, tip: str, ancestor: str) -> bool:
    """Whether ``tip`` is ``ancestor`` or a descendant of it (False when either is missing)."""
    if tip == ancestor:
        return True
    try:
        return bool(repo.descendant_of(tip, ancestor))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def relation(repo: pygit2.Repository, commit: str, applied: str | None) -> Relation:
    if applied is None:
        return "descendant"
    if commit == applied:
        return "same"
    if contains(repo, commit, applied):
        return "descendant"
    if contains(repo, applied, commit):
        return "ancestor"
    try:
        repo[applied]
    except (KeyError, ValueError):
        return "unknown"
    return "diverged"


def has_commit(repo: pygit2.Repository, sha: str) -> bool:
    try:
        return bool(repo[sha].type == pygit2.enums.ObjectType.COMMIT)
    except (KeyError, ValueError):
        return False


def tag_facts(
    repo: pygit2.Repository, verifier: Verifier, wanted: set[str] | None = None
) -> list[TagFacts]:
    """Every tag; signatures are verified only for names in ``wanted`` (None: all)."""
    out: list[TagFacts] = []
    for refname in repo.references:
        if not refname.startswith("refs/tags/"):
            continue
        name = refname[len("refs/tags/") :]
        ref = repo.references.get(refname)
        if ref is None:
            continue
        oid = str(ref.target)
        obj = repo.get(oid)
        if obj is None:
            continue
        if not isinstance(obj, pygit2.Tag):
            target = str(obj.id) if obj.type == pygit2.enums.ObjectType.COMMIT else None
            out.append(TagFacts(name=name, target=target, annotated=False))
            continue
        target, when, _ = _tag_object(repo, oid)
        sig: Signature | None = None
        if wanted is None or name in wanted:
            sig = tag_signature(repo, oid, verifier)
        out.append(
            TagFacts(
                name=name, target=target, annotated=True, time=when, signature=sig, tag_sha=oid
            )
        )
    return out


def _tag_object(repo: pygit2.Repository, oid: str) -> tuple[str | None, int | None, bytes]:
    hit = _tag_cache.get(oid)
    if hit is not None:
        return hit
    tag = repo[oid]
    assert isinstance(tag, pygit2.Tag)
    try:
        peeled = tag.peel(pygit2.Commit)
        target: str | None = str(peeled.id)
    except (pygit2.GitError, ValueError, KeyError):
        target = None
    when = int(tag.tagger.time) if tag.tagger is not None else None
    raw = tag.read_raw()
    if len(_tag_cache) >= _CACHE_MAX:
        _tag_cache.clear()
    _tag_cache[oid] = (target, when, raw)
    return target, when, raw


def tag_signature(repo: pygit2.Repository, oid: str, verifier: Verifier) -> Signature:
    _, when, raw = _tag_object(repo, oid)
    parts = split_tag(raw)
    if parts is None:
        return Signature.unsigned()
    payload, signature = parts
    return verifier.verify(SignedObject(oid, payload, signature, when or 0))
