"""Facts from Git (pygit2): the first-parent chain, what each commit changed, tags, ancestry.

I/O at the edge: reads the repository, verifies signatures through ``signatures``, and
returns ``values`` for ``decide``. Commit and tag facts are pure per object, so they are
cached by object sha in a ``FactCache`` (one per reconciler, built in the wiring): a
re-evaluation after one new merge reads one new commit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pygit2

from reconciler.approval.signatures import SignedObject, Verifier, split_tag
from reconciler.approval.values import Change, CommitFacts, Relation, Signature, TagFacts
from reconciler.secret_files import is_secret_file
from reconciler.validate import is_fleet_file

_CACHE_MAX = 500_000  # commit facts and tags: small values
_RECORDS_MAX = 4_096  # raw tree entries: a walk needs little more than the parent's trees
TagObject = tuple[str | None, int | None, bytes]  # (peeled commit, tagger time, raw object)


@dataclass
class FactCache:
    """What Git facts cost to read, by object id (content-addressed, so never stale)."""

    commits: dict[str, CommitFacts] = field(default_factory=dict)
    tags: dict[str, TagObject] = field(default_factory=dict)
    records: dict[bytes, frozenset[bytes]] = field(default_factory=dict)


def _remember(cache: dict[str, CommitFacts], key: str, value: CommitFacts) -> None:
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = value


# Config files (issue 17: release ``config.files[].from``, always under config/) are
# delivered to nodes, so any change under config/ needs approval like a release file.
_CONFIG_DEPTH = 16
_CONFIG_DIR = "config/"
# Fleet files live at most two levels down (fleet.yaml, nodes/<n>.yaml,
# releases/<agent>/<version>.yaml, models/<name>/<version>.yaml): how deep to compare.
# secrets/ (issue 17): its age files reach the nodes, so changing one needs approval too;
# nested folders are allowed there (secrets/<agent>/<name>.age)
_FLEET_DEPTH = {
    b"nodes": 0,
    b"releases": 1,
    b"models": 1,
    b"secrets": 8,
    b"config": _CONFIG_DEPTH,
}
# Files that change how fleet files are shown or checked out (a `-diff` or
# `linguist-generated` attribute collapses a fleet file's diff in review; a submodule
# list): a change to them needs approval like a fleet file (docs/security.md).
_TOP_FILES = (b"fleet.yaml", b".gitattributes", b".gitmodules")
_NESTED_META = b".gitattributes"
_TREE_MODE = b"40000"
# One entry of a raw tree object: "<octal mode> <name>\0<20-byte id>".
_RECORD = re.compile(rb"[0-7]+ [^\0]+\0.{20}", re.DOTALL)

Entry = tuple[bytes, bytes]  # (20-byte id, octal mode)


def _records(repo: pygit2.Repository, oid: bytes | None, cache: FactCache) -> frozenset[bytes]:
    """A tree's raw entries, cached by tree id. Parsed with one regex over the raw object:
    building pygit2 objects per entry costs ~1.5 us each, which dominates a 10,000-commit
    walk; libgit2's own tree diff walks every entry, identical subtrees included."""
    if oid is None:
        return frozenset()
    hit = cache.records.get(oid)
    if hit is not None:
        return hit
    _, raw = repo.odb.read(pygit2.Oid(raw=oid))
    out = frozenset(_RECORD.findall(raw))
    if len(cache.records) >= _RECORDS_MAX:
        cache.records.clear()
    cache.records[oid] = out
    return out


def _entry(record: bytes) -> tuple[bytes, Entry]:
    space = record.index(b" ")
    return record[space + 1 : -21], (record[-20:], record[:space])


def _changed(
    repo: pygit2.Repository, old: bytes | None, new: bytes | None, cache: FactCache
) -> dict[bytes, tuple[Entry | None, Entry | None]]:
    """name -> (old entry, new entry) for the entries that differ between two trees
    (in id or in mode: a record holds both)."""
    a, b = _records(repo, old, cache), _records(repo, new, cache)
    out: dict[bytes, tuple[Entry | None, Entry | None]] = {}
    for rec in a - b:
        name, e = _entry(rec)
        out[name] = (e, None)
    for rec in b - a:
        name, e = _entry(rec)
        out[name] = (out.get(name, (None, None))[0], e)
    return out


def _tree_id(e: Entry | None) -> bytes | None:
    return e[0] if e is not None and e[1] == _TREE_MODE else None


def _identity(e: Entry | None) -> str | None:
    """A non-folder entry as "<mode> <id>": the same blob under another mode (a link, an
    executable) is another entry, so a mode-only push is a change."""
    if e is None or e[1] == _TREE_MODE:
        return None
    return f"{e[1].decode()} {e[0].hex()}"


def _tree_changes(
    repo: pygit2.Repository,
    old: bytes | None,
    new: bytes | None,
    prefix: str,
    depth: int,
    cache: FactCache,
) -> list[Change]:
    out: list[Change] = []
    for raw_name, (ea, eb) in _changed(repo, old, new, cache).items():
        path = prefix + raw_name.decode("utf-8", "surrogateescape")
        fa, fb = _identity(ea), _identity(eb)
        if depth > 0:
            ta, tb = _tree_id(ea), _tree_id(eb)
            if ta != tb:
                out.extend(_tree_changes(repo, ta, tb, path + "/", depth - 1, cache))
        # a link or submodule counts whatever its name: validation refuses it, and a
        # refused push must be seen as a change
        watched = (
            is_fleet_file(path)
            or is_secret_file(path)
            or path.startswith(_CONFIG_DIR)
            or raw_name == _NESTED_META
            or _odd(fa)
            or _odd(fb)
        )
        if fa != fb and watched:
            out.append(Change(path, fa, fb))
    return out


def _odd(identity: str | None) -> bool:
    """A symlink or gitlink entry (never allowed where fleet files live)."""
    return identity is not None and not identity.startswith("100")


def fleet_changes(
    repo: pygit2.Repository, old_tree: bytes | None, new_tree: bytes, cache: FactCache
) -> list[Change]:
    """Fleet entries changed from ``old_tree`` (None: empty) to ``new_tree`` (in content or
    in mode), sorted by path; identical subtrees are skipped by id."""
    out: list[Change] = []
    for raw_name, (ea, eb) in _changed(repo, old_tree, new_tree, cache).items():
        name = raw_name.decode("utf-8", "surrogateescape")
        fa, fb = _identity(ea), _identity(eb)
        if raw_name in _TOP_FILES:
            if fa != fb:
                out.append(Change(name, fa, fb))
        elif raw_name in _FLEET_DEPTH:
            ta, tb = _tree_id(ea), _tree_id(eb)
            if ta != tb:
                depth = _FLEET_DEPTH[raw_name]
                out.extend(_tree_changes(repo, ta, tb, name + "/", depth, cache))
            if fa != fb:
                out.append(Change(name, fa, fb))  # a fleet folder replaced by a file or link
    return sorted(out, key=lambda c: c.path)


def commit_facts(repo: pygit2.Repository, sha: str, cache: FactCache) -> CommitFacts:
    """What ``sha`` changed in fleet files relative to its first parent (all files: root)."""
    hit = cache.commits.get(sha)
    if hit is not None:
        return hit
    commit = repo[sha].peel(pygit2.Commit)
    parents = tuple(str(p) for p in commit.parent_ids)
    old_tree = repo[commit.parent_ids[0]].peel(pygit2.Commit).tree_id.raw if parents else None
    facts = CommitFacts(
        sha=sha,
        parents=parents,
        time=int(commit.commit_time),
        summary=(commit.message.splitlines() or [""])[0][:200],
        changes=tuple(fleet_changes(repo, old_tree, commit.tree_id.raw, cache)),
    )
    _remember(cache.commits, sha, facts)
    return facts


def commit_signature(
    repo: pygit2.Repository, sha: str, verifier: Verifier, observed: float
) -> Signature:
    """The verdict on ``sha``'s signature with keys judged at ``observed`` (unix time)."""
    commit = repo[sha].peel(pygit2.Commit)
    signature, payload = commit.gpg_signature
    if not signature:
        return Signature.unsigned()
    return verifier.verify(SignedObject(sha, payload, signature, int(observed)))


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


def first_parents_until(
    repo: pygit2.Repository, tip: str, stop: str, limit: int
) -> list[str] | None:
    """The first-parent chain from ``tip`` down to (not including) ``stop``, newest first;
    None when ``stop`` is not on that chain within ``limit`` commits. Following parent ids
    by hand is O(new commits); a hiding revwalk marks all of history (~100 ms at 10k)."""
    out: list[str] = []
    sha = tip
    while sha != stop:
        if len(out) >= limit:
            return None
        out.append(sha)
        commit = repo[sha].peel(pygit2.Commit)
        if not commit.parent_ids:
            return None
        sha = str(commit.parent_ids[0])
    return out


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


Observe = Callable[[Sequence[str]], Mapping[str, float]]


def tag_facts(
    repo: pygit2.Repository,
    verifier: Verifier,
    observe: Observe,
    wanted: set[str] | None,
    cache: FactCache,
) -> list[TagFacts]:
    """Every tag; signatures are verified only for names in ``wanted`` (None: all), with
    keys judged when each tag object was first observed (``observe`` records and says)."""
    out: list[TagFacts] = []
    found: list[tuple[str, pygit2.Object]] = []
    for refname in repo.references:
        if not refname.startswith("refs/tags/"):
            continue
        name = refname[len("refs/tags/") :]
        ref = repo.references.get(refname)
        if ref is None:
            continue
        obj = repo.get(str(ref.target))
        if obj is not None:
            found.append((name, obj))
    judged = [
        str(obj.id)
        for name, obj in found
        if isinstance(obj, pygit2.Tag) and (wanted is None or name in wanted)
    ]
    seen = observe(judged) if judged else {}
    for name, obj in found:
        oid = str(obj.id)
        if not isinstance(obj, pygit2.Tag):
            target = oid if obj.type == pygit2.enums.ObjectType.COMMIT else None
            out.append(TagFacts(name=name, target=target, annotated=False))
            continue
        target, when, _ = _tag_object(repo, oid, cache)
        sig: Signature | None = None
        if oid in seen and (wanted is None or name in wanted):
            sig = tag_signature(repo, oid, verifier, seen[oid], cache)
        out.append(
            TagFacts(
                name=name,
                target=target,
                annotated=True,
                time=when,
                signature=sig,
                tag_sha=oid,
                tagged_as=obj.name,
            )
        )
    return out


def _tag_object(repo: pygit2.Repository, oid: str, cache: FactCache) -> TagObject:
    hit = cache.tags.get(oid)
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
    if len(cache.tags) >= _CACHE_MAX:
        cache.tags.clear()
    cache.tags[oid] = (target, when, raw)
    return target, when, raw


def tag_signature(
    repo: pygit2.Repository, oid: str, verifier: Verifier, observed: float, cache: FactCache
) -> Signature:
    """The verdict on tag object ``oid``'s signature with keys judged at ``observed``."""
    _, _, raw = _tag_object(repo, oid, cache)
    parts = split_tag(raw)
    if parts is None:
        return Signature.unsigned()
    payload, signature = parts
    return verifier.verify(SignedObject(oid, payload, signature, int(observed)))
