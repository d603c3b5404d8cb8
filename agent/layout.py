"""The install root on disk: versions, the ``current``/``previous`` symlinks, pruning.

::

    <root>/<workload>/versions/<version>/   complete unpacked artifact (or absent)
    <root>/<workload>/current  -> versions/<v>
    <root>/<workload>/previous -> versions/<u>

Symlinks are relative (the root can be moved or reached through a symlink) and flipped
atomically: a new symlink beside the old one, then ``os.replace``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from agent.state import fsync_dir

log = logging.getLogger(__name__)

MARKER = ".fleetkeeper-artifact"
STAGING_PREFIX = ".staging-"


def path_within(path: Path, root: Path) -> bool:
    """True when ``path`` is ``root`` or inside it. Both must already be resolved (pure)."""
    return path == root or root in path.parents


def resolved_within(path: Path | str, root: Path | str) -> bool:
    """Compare *resolved* paths on both sides, so a root reached through a symlink matches."""
    return path_within(Path(os.path.realpath(path)), Path(os.path.realpath(root)))


@dataclass(frozen=True)
class WorkloadLayout:
    root: Path
    name: str

    @property
    def dir(self) -> Path:
        return self.root / self.name

    @property
    def versions(self) -> Path:
        return self.dir / "versions"

    @property
    def downloads(self) -> Path:
        return self.dir / "downloads"

    @property
    def current(self) -> Path:
        return self.dir / "current"

    @property
    def previous(self) -> Path:
        return self.dir / "previous"

    def version_dir(self, version: str) -> Path:
        return self.versions / version

    def link_version(self, link: Path) -> str | None:
        """The version a symlink points at when it is a complete version dir, else None."""
        try:
            target = os.readlink(link)
        except OSError:
            return None
        version = Path(target).name
        vdir = self.version_dir(version)
        if Path(target).parent.name != "versions" or not (vdir / MARKER).exists():
            return None
        return version

    def current_version(self) -> str | None:
        return self.link_version(self.current)

    def previous_version(self) -> str | None:
        return self.link_version(self.previous)

    def resolved_current(self) -> Path | None:
        v = self.current_version()
        return Path(os.path.realpath(self.version_dir(v))) if v else None

    def version_of_path(self, path: Path | str) -> str | None:
        """The version whose directory ``path`` resolves into (resolved on both sides)."""
        real = Path(os.path.realpath(path))
        versions = Path(os.path.realpath(self.versions))
        if versions not in real.parents:
            return None
        rel = real.relative_to(versions)
        name = rel.parts[0] if rel.parts else None
        if not name or name.startswith("."):
            return None
        return name

    def installed_sha256(self, version: str) -> str | None:
        try:
            return (self.version_dir(version) / MARKER).read_text("utf-8").split()[0]
        except (OSError, IndexError):
            return None

    def is_complete(self, version: str) -> bool:
        return (self.version_dir(version) / MARKER).is_file()

    def staging_dir(self) -> Path:
        self.versions.mkdir(parents=True, exist_ok=True)
        path = self.versions / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        path.mkdir()
        return path

    def commit_staged(self, staging: Path, version: str, sha256: str) -> Path:
        """Mark ``staging`` complete and rename it to ``versions/<version>`` (atomic)."""
        (staging / MARKER).write_text(f"{sha256}\n", "utf-8")
        final = self.version_dir(version)
        if final.exists():
            # An incomplete leftover (no marker) from an older agent: move it out of the way.
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_dir(self.versions)
        return final

    def flip(self, link: Path, version: str | None) -> None:
        """Point ``link`` at ``versions/<version>`` atomically (None removes the link)."""
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            fsync_dir(link.parent)
            return
        if not self.is_complete(version):
            raise FileNotFoundError(f"refusing to point {link} at incomplete version {version}")
        tmp = link.with_name(f".{link.name}.tmp-{uuid.uuid4().hex[:8]}")
        os.symlink(os.path.join("versions", version), tmp)
        os.replace(tmp, link)
        fsync_dir(link.parent)

    def flip_back(self, to: str, previous: str | None) -> None:
        """Undo an update: ``current`` back to ``to``, ``previous`` back to what it was
        before (removed when that version is gone)."""
        self.flip(self.current, to)
        self.flip(self.previous, previous if previous and self.is_complete(previous) else None)

    def clean_leftovers(self) -> None:
        """Remove half-made staging dirs and temp symlinks left by a killed agent."""
        if self.versions.is_dir():
            for p in self.versions.iterdir():
                if p.name.startswith(STAGING_PREFIX) or (p.is_dir() and not (p / MARKER).exists()):
                    shutil.rmtree(p, ignore_errors=True)
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name.startswith((".current.tmp-", ".previous.tmp-")):
                    with contextlib.suppress(OSError):
                        os.unlink(p)

    def prune(self, keep: int) -> list[str]:
        """Remove old complete versions beyond the newest ``keep``; never current/previous."""
        if not self.versions.is_dir():
            return []
        protected = {self.current_version(), self.previous_version()}
        complete = [p for p in self.versions.iterdir() if p.is_dir() and (p / MARKER).is_file()]
        complete.sort(key=lambda p: (p / MARKER).stat().st_mtime, reverse=True)
        removed = []
        for p in complete[keep:]:
            if p.name in protected:
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
            log.info("removed old version %s/%s", self.name, p.name)
        return removed
