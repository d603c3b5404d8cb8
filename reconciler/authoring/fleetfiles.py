"""Read a fleet repo's files on disk, and add one file only when the fleet stays valid.

The new file is validated together with the whole fleet as it is on disk (every cross-file
rule); it is written, atomically, only when nothing in it is an error. Existing files are
never overwritten unless asked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from reconciler.commands.validate import find_root, worktree_entries
from reconciler.errors import FleetkeeperError
from reconciler.validate import Report, validate_files


class AuthoringError(FleetkeeperError):
    reason = "AuthoringError"


def fleet_root(repo: Path | None) -> Path:
    base = (repo or Path.cwd()).resolve()
    if not base.is_dir():
        raise AuthoringError(f"--repo {repo}: no such folder")
    return find_root(base)


def versions(root: Path, folder: str) -> dict[str, Mapping[str, Any]]:
    """``{version: document}`` of the YAML files in ``root/folder`` that parse as mappings."""
    out: dict[str, Mapping[str, Any]] = {}
    base = root / folder
    for path in sorted(base.glob("*.yaml")) if base.is_dir() else []:
        try:
            doc = yaml.safe_load(path.read_text("utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue  # `fleetkeeper validate` reports it; the others still serve as a base
        if isinstance(doc, dict):
            out[path.name.removesuffix(".yaml")] = doc
    return out


def add_file(root: Path, rel: str, text: str, *, force: bool = False) -> Report:
    """Validate the fleet with ``rel`` set to ``text``; write it when that passes. The
    report covers violations that involve ``rel`` (with all documents, for what follows)."""
    target = root / rel
    if target.exists() and not force:
        raise AuthoringError(f"{target} exists; pass --force to replace it")
    found = worktree_entries(root)
    files = {**found.files, rel: text.encode("utf-8")}
    report = validate_files(files, irregular=found.irregular).only({rel})
    if not report.ok:
        return report
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        tmp.write_text(text, "utf-8")
        os.replace(tmp, target)
    except OSError as exc:
        raise AuthoringError(f"cannot write {target}: {exc.strerror}") from exc
    return report
