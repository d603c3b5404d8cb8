"""Git hooks that run ``fleetkeeper validate``: a client-side pre-commit hook and a
server-side pre-receive hook.

A hook script calls the Python interpreter that installed it by absolute path (``PATH``
inside git hooks is unreliable: GUIs, IDEs and forges start git with a bare one), with
``-P`` so a ``reconciler/`` folder in the repo cannot shadow the installed package.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from reconciler import gitfiles
from reconciler.errors import FleetkeeperError
from reconciler.validate import validate_files
from reconciler.validate.config_files import with_config
from reconciler.validate.violations import summary

log = logging.getLogger(__name__)

HookKind = Literal["pre-commit", "pre-receive"]
MARKER = "# fleetkeeper-managed hook"


class HookExists(FleetkeeperError):
    reason = "HookExists"


def script(kind: HookKind, *, python: str | None = None, fleet_dir: str = "") -> str:
    """The text of a hook script that runs this fleetkeeper."""
    exe = shlex.quote(python or sys.executable)
    if kind == "pre-commit":
        repo = f" --repo {shlex.quote(fleet_dir)}" if fleet_dir else ""
        what = "validates the fleet files staged for commit (git commit --no-verify skips it)"
        command = f"exec {exe} -P -m reconciler.cli validate --staged{repo}"
    else:
        what = "rejects a push whose new tip has invalid fleet files"
        where = f" --fleet-dir {shlex.quote(fleet_dir)}" if fleet_dir else ""
        command = f"exec {exe} -P -m reconciler.cli hooks run pre-receive{where}"
    return (
        "#!/bin/sh\n"
        f"{MARKER}: {what}.\n"
        "# Written by `fleetkeeper hooks install`; run it again to update, delete to remove.\n"
        f"{command}\n"
    )


def install(repo: Path, kind: HookKind, *, force: bool = False, fleet_dir: str = "") -> Path:
    """Write the ``kind`` hook into ``repo``'s hooks folder; returns its path.

    An existing hook that fleetkeeper did not write is kept unless ``force`` (then it is
    moved aside to ``<hook>.fleetkeeper-backup``). ``fleet_dir``: for a pre-receive hook,
    the folder of the pushed trees that holds the fleet (default: their root); a pre-commit
    hook works it out from ``repo`` being a subfolder of the work tree.
    """
    repo = repo.resolve()
    hooks = gitfiles.hooks_dir(repo)
    fleet_dir = fleet_dir.strip("/")
    if kind == "pre-commit":
        top = gitfiles.toplevel(repo)
        if top is None:
            raise FleetkeeperError(
                f"{repo} is a bare repository: it has no commits made in it; "
                "install a pre-receive hook (--pre-receive) instead"
            )
        if repo != top.resolve():  # a fleet repo in a subfolder of a bigger repo
            fleet_dir = repo.relative_to(top.resolve()).as_posix()
    target = hooks / kind
    if target.exists() and MARKER not in target.read_text("utf-8", "replace"):
        if not force:
            raise HookExists(
                f"{target} exists and was not written by fleetkeeper; "
                "call it from your hook, or use --force to move it aside"
            )
        target.replace(target.with_name(f"{kind}.fleetkeeper-backup"))
    hooks.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{kind}.fleetkeeper-tmp")
    tmp.write_text(script(kind, fleet_dir=fleet_dir), "utf-8")
    tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    os.replace(tmp, target)
    log.debug("installed %s hook at %s", kind, target)
    return target


@dataclass(frozen=True)
class RefUpdate:
    old: str
    new: str
    ref: str

    @classmethod
    def parse(cls, line: str) -> RefUpdate:
        old, new, ref = line.split(maxsplit=2)
        return cls(old, new, ref.strip())


def pre_receive(
    repo: Path, updates: Iterable[RefUpdate], out: TextIO, *, fleet_dir: str = ""
) -> int:
    """Judge every pushed ref's new tip; 1 (reject the whole push) when one is invalid.

    Deleted refs pass; new refs are judged like updated ones. Git shows what is written
    to ``out`` to the pusher, each line prefixed with ``remote:``. ``fleet_dir``: the
    folder of the trees that holds the fleet ('' for the root).
    """
    prefix = fleet_dir.strip("/") + "/" if fleet_dir.strip("/") else ""
    verdict = 0
    judged: dict[str, bool] = {}  # one validation per commit, however many refs point at it
    for update in updates:
        if update.new == gitfiles.ZERO_SHA:
            continue  # a deletion leaves nothing to validate
        commit = gitfiles.resolve_commit(repo, update.new)
        if commit is None:
            continue  # a tag of a tree or blob: no fleet revision
        if commit in judged:
            if not judged[commit]:
                out.write(f"fleetkeeper: {update.ref}: rejected ({commit[:12]} is invalid)\n")
                verdict = 1
            continue
        found = gitfiles.tree_entries(repo, commit, prefix)
        report = validate_files(found.files, irregular=found.irregular)
        read = gitfiles.entry_reader(repo, commit, prefix)
        report = with_config(report, read, found.files).with_prefix(prefix)
        judged[commit] = report.ok
        if report.ok and not report.violations:
            continue
        for v in report.violations:
            out.write(f"{v}\n")
        if report.ok:
            out.write(f"fleetkeeper: {update.ref}: {summary(report)}\n")
        else:
            out.write(
                f"fleetkeeper: {update.ref}: push rejected, {commit[:12]} has {summary(report)}\n"
            )
            verdict = 1
    return verdict
