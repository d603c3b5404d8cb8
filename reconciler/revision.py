"""An approved commit -> its validated fleet spec, read from the commit's tree with pygit2.

The fleet files are read from Git objects, never from a work tree. Everything is keyed by
object id, which names content: subtree listings by tree oid, file bytes by blob oid, and
the validation result by the set of (path, blob oid), so re-loading a revision after one
new merge reads only the changed blobs. The cross-file rules are incremental too
(``validate_incremental`` with the RuleMemo kept here): after a merge that changes no node
file and not fleet.yaml, only the changed files are judged again.

Only regular files (mode 100644) are read: a symlink, a submodule or an executable where
fleet files live makes the revision invalid (``validate.entries``), so that what is
judged, what is approved and what is deployed are the same bytes. Blobs are read as
stored: no .gitattributes filter, eol or encoding ever applies.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pygit2

from reconciler.secret_files import (
    AGE_SUFFIX,
    RECIPIENTS_SUFFIX,
    attach_ciphertexts,
    is_secret_file,
)
from reconciler.spec import FleetSpec
from reconciler.validate import (
    FileCheck,
    Report,
    RuleMemo,
    Violation,
    secret_rules,
    validate_incremental,
)
from reconciler.validate.config_files import Entry, load_config
from reconciler.validate.entries import entry_violations
from reconciler.validate.loader import LoadedFile, load_file
from reconciler.validate.schema_check import check_schema, expected_kind
from reconciler.validate.violations import sort_key

log = logging.getLogger(__name__)

FLEET_DIRS = ("nodes", "releases", "models")
SECRETS_DIR = "secrets"  # age files releases refer to (issue 17): read, never decrypted
TOP_FILES = ("fleet.yaml", "fleet.yml")
_YAML = (".yaml", ".yml")
SECRET_SUFFIXES = (AGE_SUFFIX, RECIPIENTS_SUFFIX)
_REGULAR = pygit2.enums.FileMode.BLOB  # 100644; anything else is refused (validate.entries)
_TREE = pygit2.enums.FileMode.TREE
# Bounds (a full cache is simply cleared): blobs and parsed files cover a fleet of ~20k
# files; listings are per tree and a fleet folder's listing is as long as the folder.
_CACHE_MAX = 50_000
_LISTINGS_MAX = 4_096
_RESULT_MAX = 4

Listing = tuple[tuple[str, str], ...]  # (repo-relative path, blob oid), sorted
Irregular = tuple[tuple[str, str], ...]  # (repo-relative path, octal mode): not regular files

_lock = threading.Lock()
_listings: dict[str, tuple[Listing, Irregular]] = {}
# fleet_entries by root tree oid (plan asks twice per commit)
_roots: dict[str, tuple[Listing, Irregular]] = {}
_blobs: dict[str, bytes] = {}
_results: dict[tuple[Listing, Irregular], tuple[FleetSpec | None, tuple[Violation, ...]]] = {}
_checked: dict[tuple[str, str], tuple[LoadedFile | None, tuple[Violation, ...]]] = {}
_memo = RuleMemo()  # the cross-file rules' findings of the last validated listing


@dataclass(frozen=True)
class LoadedRevision:
    sha: str
    spec: FleetSpec | None  # None when the revision is invalid
    violations: tuple[Violation, ...]  # errors and warnings

    @property
    def ok(self) -> bool:
        return self.spec is not None


def _prefixed(found: tuple[Listing, Irregular], prefix: str) -> tuple[Listing, Irregular]:
    listing, irregular = found
    return (
        tuple((prefix + p, o) for p, o in listing),
        tuple((prefix + p, m) for p, m in irregular),
    )


def _list_tree(
    repo: pygit2.Repository, tree: pygit2.Tree, prefix: str, secrets: bool = False
) -> tuple[Listing, Irregular]:
    """``secrets``: list the files of ``secrets/`` (``*.age``, ``*.recipients``), not YAML."""
    key = f"{tree.id}{'s' if secrets else ''}"
    hit = _listings.get(key)
    if hit is not None:
        return _prefixed(hit, prefix)
    out: list[tuple[str, str]] = []
    odd: list[tuple[str, str]] = []
    for entry in tree:
        name = entry.name
        assert name is not None
        if entry.filemode == _TREE:
            sub = repo[entry.id]
            assert isinstance(sub, pygit2.Tree)
            listing, irregular = _list_tree(repo, sub, name + "/", secrets)
            out.extend(listing)
            odd.extend(irregular)
        elif entry.filemode == _REGULAR:
            if name.endswith(SECRET_SUFFIXES if secrets else _YAML):
                out.append((name, str(entry.id)))
        else:
            odd.append((name, f"{entry.filemode:o}"))
    found = (tuple(sorted(out)), tuple(sorted(odd)))
    if len(_listings) >= _LISTINGS_MAX:
        _listings.clear()
    _listings[key] = found
    return _prefixed(found, prefix)


def fleet_entries(repo: pygit2.Repository, sha: str) -> tuple[Listing, Irregular]:
    """Where fleet files live in commit ``sha`` (top-level and fleet folders): the regular
    YAML files, and the entries that are not regular files (refused by validation)."""
    commit = repo[sha]
    tree = commit.peel(pygit2.Tree)
    hit = _roots.get(str(tree.id))
    if hit is not None:
        return hit
    out: list[tuple[str, str]] = []
    odd: list[tuple[str, str]] = []
    for entry in tree:
        name = entry.name
        assert name is not None
        if name == SECRETS_DIR and entry.filemode == _TREE:
            sub = repo[entry.id]
            assert isinstance(sub, pygit2.Tree)
            listing, _ = _list_tree(repo, sub, name + "/", secrets=True)
            out.extend(listing)  # a link there is not read: the secret is missing
            continue
        if name not in TOP_FILES and name not in FLEET_DIRS:
            continue
        if name in TOP_FILES and entry.filemode == _REGULAR:
            out.append((name, str(entry.id)))
        elif name in FLEET_DIRS and entry.filemode == _TREE:
            sub = repo[entry.id]
            assert isinstance(sub, pygit2.Tree)
            listing, irregular = _list_tree(repo, sub, name + "/")
            out.extend(listing)
            odd.extend(irregular)
        else:
            odd.append((name, f"{entry.filemode:o}"))
    found = (tuple(sorted(out)), tuple(sorted(odd)))
    if len(_roots) >= _RESULT_MAX:
        _roots.pop(next(iter(_roots)))
    _roots[str(tree.id)] = found
    return found


def fleet_listing(repo: pygit2.Repository, sha: str) -> Listing:
    """The regular YAML files where fleet files live in commit ``sha``."""
    return fleet_entries(repo, sha)[0]


def _blob(repo: pygit2.Repository, oid: str) -> bytes:
    data = _blobs.get(oid)
    if data is None:
        blob = repo[oid]
        assert isinstance(blob, pygit2.Blob)
        data = bytes(blob.data)
        if len(_blobs) >= _CACHE_MAX:
            _blobs.clear()
        _blobs[oid] = data
    return data


def read_fleet_files(repo: pygit2.Repository, sha: str) -> dict[str, bytes]:
    return {path: _blob(repo, oid) for path, oid in fleet_listing(repo, sha)}


def _check_file(
    path: str, oid: str, data: bytes
) -> tuple[LoadedFile | None, tuple[Violation, ...]]:
    """The per-file checks of ``validate_files`` (YAML pitfalls, schema), cached by
    (path, blob oid): they depend on nothing else."""
    key = (path, oid)
    hit = _checked.get(key)
    if hit is None:
        loaded, found = load_file(path, data)
        if loaded is not None:
            kind = expected_kind(path)
            assert kind is not None
            found.extend(check_schema(loaded, kind))
        hit = (loaded, tuple(found))
        if len(_checked) >= _CACHE_MAX:
            _checked.clear()
        _checked[key] = hit
    return hit


def validate_listing(repo: pygit2.Repository, listing: Listing) -> Report:
    return _validate_listing(repo, listing)[0]


def _validate_listing(repo: pygit2.Repository, listing: Listing) -> tuple[Report, FleetSpec | None]:
    """``reconciler.validate.validate_files`` over the files of ``listing``: the per-file
    half cached by (path, blob oid), the cross-file rules by ``validate_incremental``'s
    memo, so one new merge re-checks only the files it changed.
    tests/integration/test_approval_revision.py and test_incremental_revision.py hold it
    equal to ``validate_files``."""
    global _memo

    def check(path: str, oid: str) -> FileCheck:
        return _check_file(path, oid, _blob(repo, oid))

    with _lock:
        memo = _memo
    secrets = {p: _blob(repo, oid) for p, oid in listing if is_secret_file(p)}
    report, spec, memo = validate_incremental(
        listing, check, memo, extra_rules=(secret_rules.secret_files(secrets),)
    )
    with _lock:
        _memo = memo
    return report, attach_ciphertexts(spec, secrets) if report.ok else None


def load_revision(repo: pygit2.Repository, sha: str) -> LoadedRevision:
    """Read, validate and build the fleet spec of commit ``sha`` (spec None when invalid)."""
    found = fleet_entries(repo, sha)
    listing, irregular = found
    with _lock:
        hit = _results.get(found)
    if hit is None:
        report, spec = _validate_listing(repo, listing)
        violations = report.violations
        odd = entry_violations(irregular)
        if odd:  # a link, a submodule or an executable where fleet files live
            spec = None
            violations = tuple(sorted((*odd, *violations), key=sort_key))
        hit = (spec, violations)
        with _lock:
            if len(_results) >= _RESULT_MAX:
                _results.pop(next(iter(_results)))
            _results[found] = hit
        if spec is None:  # the verdict is the caller's to report (the loop audits it once)
            log.debug("revision %s is invalid: %d violation(s)", sha, len(violations))
    spec, violations = hit
    if spec is not None and any(d.config is not None for d in spec.deployables):
        # Config files live outside the fleet folders (config/...), so they are not in the
        # cached listing: read them at this commit every time (their blobs are cached).
        spec, found_config = load_config(spec, _reader(repo, sha))
        if found_config:
            violations = tuple(sorted((*violations, *found_config), key=sort_key))
            if any(v.severity == "error" for v in found_config):
                spec = None
    return LoadedRevision(sha=sha, spec=spec, violations=violations)


def _reader(repo: pygit2.Repository, sha: str) -> Callable[[str], Entry | None]:
    """Entries of commit ``sha``'s tree by repo-relative path, as (octal mode, bytes)."""
    tree = repo[sha].peel(pygit2.Tree)

    def read(path: str) -> Entry | None:
        try:
            obj = tree[path]
        except (KeyError, ValueError):
            return None
        mode = f"{obj.filemode:o}"
        if not isinstance(obj, pygit2.Blob) or obj.filemode != _REGULAR:
            return (mode, b"")
        return (mode, _blob(repo, str(obj.id)))

    return read
