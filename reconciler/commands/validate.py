"""`fleetkeeper validate [PATH...] [--staged] [--rev REV] [--repo DIR] [--format text|json]`.

Reads fleet files from the working tree (default), the git index (``--staged``: what
will be committed) or a revision's tree (``--rev``), validates the whole fleet repo they
belong to, and reports on the named PATHs (all files when none is named) plus cross-file
errors that involve them. Exit 0 valid (warnings allowed), 1 invalid, 2 usage error.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler import gitfiles
from reconciler.errors import CommandError
from reconciler.secret_files import SECRETS_DIR, is_secret_file
from reconciler.validate import FLEET_FILE_PATTERNS, Report, Violation, validate_files
from reconciler.validate.config_files import Entry, Reader, with_config
from reconciler.validate.violations import merge, render_json, render_text, sort_key, summary

_MARKER_DIRS = ("nodes", "releases", "models")
_PATTERNS = ", ".join(FLEET_FILE_PATTERNS)


class UsageError(Exception):
    """The invocation cannot be carried out (exit 2)."""


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "validate",
        help="validate fleet files (schema, YAML pitfalls, cross-file rules)",
        description="Validate the fleet files of a fleet repo. Errors are printed as "
        "path:line:column: message. Exit 0 valid, 1 invalid, 2 usage error.",
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or folders to report on (default: the whole fleet repo); the rest of "
        "the repo is still loaded for cross-file rules",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--staged", action="store_true", help="validate the git index (what will be committed)"
    )
    source.add_argument("--rev", metavar="REV", help="validate the tree of a commit")
    p.add_argument(
        "--repo", metavar="DIR", help="the fleet repo (default: found from the current folder)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        report = collect(
            [Path(p) for p in args.paths],
            staged=args.staged,
            rev=args.rev,
            repo=Path(args.repo) if args.repo else None,
            cwd=Path.cwd(),
        )
    except UsageError as exc:
        print(f"fleetkeeper validate: {exc}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(render_json(report))
    else:
        sys.stdout.write(render_text(report))
        if report.checked or report.violations:
            print(f"fleetkeeper validate: {summary(report)}", file=sys.stderr)
            if args.staged and not report.ok:  # most likely run by the pre-commit hook
                print(
                    "fleetkeeper validate: fix the staged files above and `git add` them "
                    "(`git commit --no-verify` skips this check)",
                    file=sys.stderr,
                )
        else:
            print(f"fleetkeeper validate: no fleet files found ({_PATTERNS})", file=sys.stderr)
    return 0 if report.ok else 1


@dataclass
class _Group:
    """Named paths (relative to one fleet root); ``everything`` when the root itself is named."""

    named: set[str] = field(default_factory=set)
    everything: bool = False


def find_root(start: Path, stop: Path | None = None) -> Path:
    """The fleet repo holding ``start``: the nearest folder with fleet.yaml, else with
    nodes/, releases/ or models/, else the git top level, else ``start`` itself. The
    search does not leave the git work tree holding ``start`` (or ``stop``)."""
    start = start.resolve()
    top = gitfiles.toplevel(start) if start.is_dir() else None
    stop = (stop or top or Path(start.anchor)).resolve()
    chain = [start, *start.parents]
    chain = chain[: chain.index(stop) + 1] if stop in chain else chain
    for folder in chain:
        if (folder / "fleet.yaml").is_file():
            return folder
    for folder in chain:
        if any((folder / d).is_dir() for d in _MARKER_DIRS):
            return folder
    return top.resolve() if top is not None else start


def _disk_mode(path: Path) -> str:
    """The mode git would record for ``path`` (symlinks are not followed)."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return "120000"
    if stat.S_ISDIR(st.st_mode):
        return "160000" if (path / ".git").exists() else "40000"
    return "100755" if st.st_mode & 0o111 else "100644"


def disk_reader(root: Path) -> Reader:
    """Config files on disk, as git would commit them: (mode, bytes) or None when absent."""

    def read(rel: str) -> Entry | None:
        path = root / rel
        if not os.path.lexists(path):
            return None
        mode = _disk_mode(path)
        return (mode, path.read_bytes() if mode == "100644" else b"")

    return read


def worktree_entries(root: Path) -> gitfiles.FleetEntries:
    """The fleet repo on disk, read as git would commit it: regular YAML files (fleet.yaml
    and under nodes/, releases/, models/) and the entries that are not regular files."""
    files: dict[str, bytes] = {}
    irregular: list[tuple[str, str]] = []

    def visit(path: Path, rel: str) -> None:
        mode = _disk_mode(path)
        if mode == "100644":
            if rel.endswith((".yaml", ".yml")):
                files[rel] = path.read_bytes()
        elif mode != "40000":
            irregular.append((rel, mode))

    for name in ("fleet.yaml", "fleet.yml", *_MARKER_DIRS):
        if os.path.lexists(root / name):
            visit(root / name, name)
    for top in _MARKER_DIRS:
        base = root / top
        if base.is_symlink() or not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            folders = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                if _disk_mode(Path(dirpath) / d) == "40000":
                    folders.append(d)
                else:
                    visit(Path(dirpath) / d, f"{rel_dir}/{d}")  # a link or a submodule
            dirnames[:] = folders
            for fn in filenames:
                if not fn.startswith("."):
                    visit(Path(dirpath) / fn, f"{rel_dir}/{fn}")
    files.update(_secret_files(root))
    return gitfiles.FleetEntries(files, tuple(irregular))


def _secret_files(root: Path) -> dict[str, bytes]:
    """The regular files of secrets/ that releases refer to (``*.age``, ``*.recipients``)."""
    base = root / SECRETS_DIR
    if base.is_symlink() or not base.is_dir():
        return {}
    out = {}
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if is_secret_file(rel) and _disk_mode(path) == "100644":
            out[rel] = path.read_bytes()
    return out


def _display(report: Report, root: Path, cwd: Path) -> Report:
    """Paths as the user can open them: relative to the current folder when it is inside
    the fleet repo or holds it, else absolute."""
    rel = os.path.relpath(root, cwd)
    if rel == ".":
        return report
    if not rel.startswith(".."):
        return report.with_prefix(Path(rel).as_posix() + "/")
    if cwd.is_relative_to(root):
        return report.with_paths(lambda p: os.path.relpath(root / p, cwd))
    return report.with_prefix(root.as_posix() + "/")


def _group_paths(
    paths: list[Path], cwd: Path, root_of: Any, *, on_disk: bool = True
) -> dict[Path, _Group]:
    groups: dict[Path, _Group] = {}
    for raw in paths:
        path = (cwd / raw).resolve()
        if on_disk and not path.exists():
            raise UsageError(f"{raw}: no such file or folder")
        root: Path = root_of(path if path.is_dir() else path.parent)
        group = groups.setdefault(root, _Group())
        if path == root:
            group.everything = True
            continue
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError as exc:
            raise UsageError(f"{raw} is outside the fleet repo {root}") from exc
        is_folder = path.is_dir() or str(raw).endswith("/")
        group.named.add(rel.rstrip("/") + "/" if is_folder else rel)
    return groups


def _narrow(report: Report, group: _Group) -> Report:
    if group.everything:
        return report
    files = {p for p in group.named if not p.endswith("/")}
    folders = tuple(p for p in group.named if p.endswith("/"))
    wanted = files | {p for p in report.checked if p.startswith(folders)}
    wanted |= {v.path for v in report.violations if v.path.startswith(folders)}
    narrowed = report.only(wanted)
    # a named file that is not a fleet file: say so rather than pass it in silence
    said = {v.path for v in narrowed.violations}
    ignored = [
        Violation(p, 1, 1, f"ignored: not a fleet file ({_PATTERNS})", "warning")
        for p in sorted(files - set(report.checked) - said)
    ]
    if not ignored:
        return narrowed
    return Report(
        violations=tuple(sorted((*narrowed.violations, *ignored), key=sort_key)),
        documents=narrowed.documents,
        checked=narrowed.checked,
    )


def collect(
    paths: list[Path],
    *,
    staged: bool = False,
    rev: str | None = None,
    repo: Path | None = None,
    cwd: Path,
) -> Report:
    """Read, validate and narrow: the report ``fleetkeeper validate`` prints."""
    base = (cwd / repo).resolve() if repo is not None else cwd.resolve()
    if not base.is_dir():
        raise UsageError(f"{repo}: no such folder")
    if staged or rev is not None:
        return _collect_git(paths, staged=staged, rev=rev, base=base, cwd=cwd)
    if not paths:
        groups = {find_root(base): _Group(everything=True)}
    else:
        groups = _group_paths(paths, cwd, find_root)
    reports = []
    for root, group in groups.items():
        found = worktree_entries(root)
        report = validate_files(found.files, irregular=found.irregular)
        report = _narrow(with_config(report, disk_reader(root), found.files), group)
        reports.append(_display(report, root, cwd.resolve()))
    return merge(reports)


def _collect_git(
    paths: list[Path], *, staged: bool, rev: str | None, base: Path, cwd: Path
) -> Report:
    if not gitfiles.is_repository(base):
        raise UsageError(f"{base} is not in a git repository")
    top = gitfiles.toplevel(base)
    if top is None:  # a bare repository: the fleet lives at the root of its trees
        if staged:
            raise UsageError(f"{base} is a bare repository: it has no index to validate")
        git_dir, root, prefix = base, base, ""
    else:
        top = top.resolve()
        git_dir = top
        root = find_root(base, stop=top)
        prefix = "" if root == top else root.relative_to(top).as_posix() + "/"
    try:
        if staged:
            found = gitfiles.index_entries(git_dir, prefix)
        else:
            assert rev is not None
            if gitfiles.resolve_commit(git_dir, rev) is None:
                raise UsageError(f"{rev!r} names no commit in {git_dir}")
            found = gitfiles.tree_entries(git_dir, rev, prefix)
    except CommandError as exc:
        raise UsageError(str(exc)) from exc
    group = (
        _group_paths(paths, cwd, lambda _p: root, on_disk=False)[root]
        if paths
        else _Group(everything=True)
    )
    report = validate_files(found.files, irregular=found.irregular)
    read = gitfiles.entry_reader(git_dir, None if staged else rev, prefix)
    report = _narrow(with_config(report, read, found.files), group)
    return _display(report, root, cwd.resolve())
