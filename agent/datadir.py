"""A workload's persistent data directory, and its snapshot around an upgrade (issue 17).

::

    <root>/<workload>/data/                 FLEETKEEPER_DATA_DIR: memory, caches, a database
    <root>/<workload>/data.snapshot/        a copy taken before the last upgrade
    <root>/<workload>/data.snapshot.json    {"from": old version, "to": new version, "bytes"}

``data/`` lies outside ``versions/``, so an upgrade, a rollback and an agent restart leave
it alone; it is owned by the workload's user (``run.user`` / ``workloadUser``) so the
workload can write it. With ``data: {snapshot: true}`` the agent copies it before
flipping to a new version (Teleport backs up its state the same way before an upgrade),
and puts the copy back when that upgrade is rolled back: the proof fails and the agent
flips back, or the desired version goes back to the one the copy was taken from. A data
directory over ``maxBytes`` (default 1 GiB) is not copied: the upgrade goes on, with a
message saying why there is no snapshot. The copy is written beside and renamed into
place, so a snapshot is complete or absent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.isolation import WorkloadUser
from agent.state import fsync_dir, read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class DataSettings:
    """A workload entry's ``data`` block (pure)."""

    snapshot: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def parse(cls, workload: Mapping[str, Any]) -> DataSettings:
        block = workload.get("data")
        if not isinstance(block, Mapping):
            return cls()
        limit = block.get("maxBytes")
        return cls(
            snapshot=block.get("snapshot") is True,
            max_bytes=limit if isinstance(limit, int) and limit >= 0 else DEFAULT_MAX_BYTES,
        )


@dataclass(frozen=True)
class DataDir:
    dir: Path  # <root>/<name>

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def snapshot(self) -> Path:
        return self.dir / "data.snapshot"

    @property
    def _meta(self) -> Path:
        return self.dir / "data.snapshot.json"

    def ensure(self, user: WorkloadUser | None) -> Path:
        """``data/`` exists, owned by ``user`` when the workload runs as one."""
        self.data.mkdir(parents=True, exist_ok=True, mode=0o750)
        if user is not None:
            st = self.data.stat()
            if (st.st_uid, st.st_gid) != (user.uid, user.gid):
                try:
                    _chown_tree(self.data, user)
                except PermissionError as exc:
                    # a non-root agent without CAP_CHOWN: the workload starts anyway, and
                    # the log says why it cannot write its data directory
                    log.warning(
                        "cannot give %s to workload user %s: %s (the agent needs root or "
                        "CAP_CHOWN)",
                        self.data,
                        user.name,
                        exc.strerror,
                    )
        return self.data

    def take(self, old: str, new: str, settings: DataSettings) -> str | None:
        """Copy ``data/`` before upgrading ``old`` -> ``new``; a note when it is skipped."""
        if not self.data.is_dir():
            return None
        size = _size(self.data, settings.max_bytes)
        if size > settings.max_bytes:
            note = (
                f"data snapshot skipped: {self.data} holds more than data.maxBytes "
                f"{settings.max_bytes} bytes; the upgrade to {new} goes on without a copy"
            )
            log.warning("%s", note)
            self.drop()
            return note
        tmp = self.dir / f".data.snapshot.tmp-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(self.data, tmp, symlinks=True)
            _copy_owner(self.data, tmp)
            self.drop()
            os.rename(tmp, self.snapshot)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_json(self._meta, {"from": old, "to": new, "bytes": size})
        fsync_dir(self.dir)
        log.info("data of %s copied before %s -> %s (%d bytes)", self.dir.name, old, new, size)
        return None

    def taken_for(self) -> tuple[str, str] | None:
        """(from, to) of the upgrade the snapshot was taken before (None: no snapshot)."""
        meta = read_json(self._meta)
        if not isinstance(meta, dict) or not self.snapshot.is_dir():
            return None
        old, new = meta.get("from"), meta.get("to")
        return (old, new) if isinstance(old, str) and isinstance(new, str) else None

    def restore(self, back_to: str, leaving: str) -> str | None:
        """Put the snapshot back when going from ``leaving`` to ``back_to`` undoes the
        upgrade it was taken before; a note saying so (None: nothing restored)."""
        if self.taken_for() != (back_to, leaving):
            return None
        tmp = self.dir / f".data.restore-{uuid.uuid4().hex[:8]}"
        shutil.copytree(self.snapshot, tmp, symlinks=True)
        _copy_owner(self.snapshot, tmp)
        old = self.dir / f".data.old-{uuid.uuid4().hex[:8]}"
        if self.data.exists():
            os.rename(self.data, old)
        os.rename(tmp, self.data)
        fsync_dir(self.dir)
        shutil.rmtree(old, ignore_errors=True)
        self.drop()  # used: a second rollback must not bring back older data again
        note = f"data restored from the snapshot taken before {back_to} -> {leaving}"
        log.info("%s: %s", self.dir.name, note)
        return note

    def drop(self) -> None:
        shutil.rmtree(self.snapshot, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._meta)


def _size(root: Path, limit: int) -> int:
    """Bytes under ``root`` (links not followed); stops counting once over ``limit``."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
            if total > limit:
                return total
    return total


def _copy_owner(src: Path, dest: Path) -> None:
    """copytree keeps modes, not owners: give ``dest`` the owner of ``src`` (as root)."""
    st = src.stat()
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
        for dirpath, dirs, files in os.walk(dest):
            for n in (dirpath, *(os.path.join(dirpath, x) for x in (*dirs, *files))):
                os.lchown(n, st.st_uid, st.st_gid)


def _chown_tree(root: Path, user: WorkloadUser) -> None:
    for dirpath, dirs, files in os.walk(root):
        for n in (dirpath, *(os.path.join(dirpath, x) for x in (*dirs, *files))):
            os.lchown(n, user.uid, user.gid)
