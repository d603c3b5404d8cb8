"""Fleet files as git sees them: from the index (what will be committed) or a revision's tree.

Uses the git CLI, which honours everything a hook's environment sets up: the temporary
index of ``git commit -a`` / ``git commit PATH`` (GIT_INDEX_FILE) and the quarantined
objects of a push being received (GIT_OBJECT_DIRECTORY, GIT_QUARANTINE_PATH). The
environment is therefore passed through unchanged.

Only regular YAML files are read (``*.yaml``, ``*.yml``, mode 100644); every other entry
where fleet files live (a symlink, a submodule, an executable) is returned by
``index_entries``/``tree_entries`` as irregular, for ``validate.entries`` to refuse.
Blobs are read as stored: no filter, eol or working-tree-encoding attribute applies.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from reconciler.errors import CommandError, FleetkeeperError
from reconciler.secret_files import is_secret_file
from reconciler.validate.entries import in_fleet_area

ZERO_SHA = "0" * 40
_REGULAR_MODE = "100644"


@dataclass(frozen=True)
class FleetEntries:
    """The regular fleet YAML files of an index or tree, and the entries that are not
    regular files where fleet files live ((path, octal mode), refused by validation)."""

    files: dict[str, bytes]
    irregular: tuple[tuple[str, str], ...]


class NotARepository(FleetkeeperError):
    reason = "NotARepository"


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    argv = ["git", *args]
    proc = subprocess.run(argv, cwd=repo, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stderr.decode("utf-8", "replace"))
    return proc.stdout


def toplevel(path: Path) -> Path | None:
    """The work tree's top folder holding ``path``; None outside a work tree (or bare)."""
    proc = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True
    )
    out = proc.stdout.strip()
    return Path(out) if proc.returncode == 0 and out else None


def is_repository(path: Path) -> bool:
    proc = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=path, capture_output=True)
    return proc.returncode == 0


def hooks_dir(repo: Path) -> Path:
    """Where git looks for hooks in ``repo`` (honours core.hooksPath)."""
    if not is_repository(repo):
        raise NotARepository(f"{repo} is not a git repository")
    out = _git(repo, "rev-parse", "--git-path", "hooks").decode().strip()
    path = Path(out)
    return path if path.is_absolute() else (repo / path).resolve()


def resolve_commit(repo: Path, rev: str) -> str | None:
    """The commit ``rev`` names (tags peeled), or None when it names no commit."""
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _wanted(path: str, prefix: str) -> bool:
    if not path.startswith(prefix):
        return False
    # secrets/*.age and *.recipients: releases refer to them (issue 17)
    return path.endswith((".yaml", ".yml")) or is_secret_file(path[len(prefix) :])


def _read_blobs(repo: Path, entries: Sequence[tuple[str, str]]) -> dict[str, bytes]:
    """``{path: bytes}`` for (path, blob sha) pairs, with one ``git cat-file --batch``."""
    if not entries:
        return {}
    request = "".join(f"{sha}\n" for _, sha in entries).encode()
    out = _git(repo, "cat-file", "--batch", stdin=request)
    files: dict[str, bytes] = {}
    pos = 0
    for path, sha in entries:
        end = out.index(b"\n", pos)
        header = out[pos:end].decode().split()
        if len(header) != 3 or header[0] != sha:
            raise CommandError(["git", "cat-file", "--batch"], 0, f"unexpected header {header}")
        size = int(header[2])
        files[path] = out[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1  # content is followed by a newline
    return files


def _strip(entries: Iterable[tuple[str, str]], prefix: str) -> list[tuple[str, str]]:
    return [(path[len(prefix) :], sha) for path, sha in entries]


def _irregular(path: str, mode: str, prefix: str) -> bool:
    """A non-regular entry in the fleet area (judged by ``validate.entries``)."""
    return path.startswith(prefix) and mode != _REGULAR_MODE and in_fleet_area(path[len(prefix) :])


def _records(out: bytes) -> Iterator[tuple[str, str]]:
    """(meta, path) of each record of ``git ls-files --stage -z`` / ``git ls-tree -z``."""
    for record in out.decode("utf-8", "surrogateescape").split("\0"):
        if record:
            meta, path = record.split("\t", 1)
            yield meta, path


def _collect(repo: Path, rows: Iterable[tuple[str, str, str]], prefix: str) -> FleetEntries:
    """The fleet entries among ``rows`` of (mode, sha, path): regular files read, the
    rest of the fleet area kept as irregular."""
    entries: list[tuple[str, str]] = []
    irregular: list[tuple[str, str]] = []
    for mode, sha, path in rows:
        if mode == _REGULAR_MODE and _wanted(path, prefix):
            entries.append((path, sha))
        elif _irregular(path, mode, prefix):
            irregular.append((path[len(prefix) :], mode))
    return FleetEntries(_read_blobs(repo, _strip(entries, prefix)), tuple(irregular))


def index_entries(repo: Path, prefix: str = "") -> FleetEntries:
    """The index under ``prefix`` ('' or 'dir/'), paths without it: what will be committed.

    ``repo`` is the work tree's top folder; ``prefix`` is relative to it.
    """
    out = _git(repo, "ls-files", "--stage", "-z", "--full-name")
    rows = []
    for meta, path in _records(out):
        mode, sha, stage = meta.split()
        # stage != 0: an unresolved merge conflict; the commit cannot happen yet anyway
        if stage == "0":
            rows.append((mode, sha, path))
    return _collect(repo, rows, prefix)


def index_files(repo: Path, prefix: str = "") -> dict[str, bytes]:
    """The regular YAML files of ``index_entries``."""
    return index_entries(repo, prefix).files


def tree_entries(repo: Path, rev: str, prefix: str = "") -> FleetEntries:
    """Revision ``rev``'s tree under ``prefix``, paths without it."""
    commit = resolve_commit(repo, rev)
    if commit is None:
        raise CommandError(["git", "rev-parse", rev], 128, f"{rev!r} names no commit")
    out = _git(repo, "ls-tree", "-r", "-z", "--full-tree", commit)
    rows = []
    for meta, path in _records(out):
        mode, _, sha = meta.split()
        rows.append((mode, sha, path))
    return _collect(repo, rows, prefix)


def tree_files(repo: Path, rev: str, prefix: str = "") -> dict[str, bytes]:
    """The regular YAML files of ``tree_entries``."""
    return tree_entries(repo, rev, prefix).files


def entry_reader(
    repo: Path, rev: str | None, prefix: str = ""
) -> Callable[[str], tuple[str, bytes] | None]:
    """One path's (octal mode, bytes) in revision ``rev``'s tree, or in the index when
    ``rev`` is None; None when absent. For config files, which live outside the fleet
    folders (``validate.config_files``): a few paths, one git call each."""
    commit = resolve_commit(repo, rev) if rev is not None else None

    def read(path: str) -> tuple[str, bytes] | None:
        full = prefix + path
        if commit is not None:
            out = _git(repo, "ls-tree", "-z", "--full-tree", commit, "--", full)
        else:
            out = _git(repo, "ls-files", "--stage", "-z", "--full-name", "--", full)
        for record in out.decode("utf-8", "surrogateescape").split("\0"):
            if not record:
                continue
            meta, name = record.split("\t", 1)
            if name != full:
                continue  # a folder's listing (ls-tree names the folder itself)
            fields = meta.split()
            mode, sha = (fields[0], fields[2]) if commit is not None else (fields[0], fields[1])
            if mode != _REGULAR_MODE:
                return (mode, b"")
            return (mode, _read_blobs(repo, [(path, sha)])[path])
        return None

    return read
