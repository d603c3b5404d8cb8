"""A workload's config directory (issue 17): written whole beside the versions, then flipped.

::

    <root>/<workload>/configs/<key>/       the files of one desired ``config`` block
    <root>/<workload>/config          -> configs/<key>   what FLEETKEEPER_CONFIG_DIR names
    <root>/<workload>/config.previous -> configs/<old>   kept for rollback

A config directory is complete or absent, like a version directory: the files go into a
staging directory, a marker holding the release's config digest is written last, and the
directory is renamed into place. ``key`` names the content (paths and digests of the files
as resolved for this node), so the same content is never written twice and a changed
label that changes a template's output is a new directory. ``config`` is flipped
atomically (a new symlink, then ``os.replace``); the workload reads its files through it.

Every file is checked before anything is written: a relative path without ``..``, the
SHA-256 the document gives, at most ``MAX_FILE_BYTES`` each and ``MAX_TOTAL_BYTES`` in
all (the reconciler's caps). A workload without a ``config`` block gets an empty one, so
FLEETKEEPER_CONFIG_DIR always names a directory.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from agent.errors import VerifyError
from agent.state import fsync_dir, read_json, write_json

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 * 1024
MAX_TOTAL_BYTES = 1024 * 1024
MARKER = ".fleetkeeper-config"
_STAGING = ".staging-"
_PENDING = ".restart-pending.json"  # a flip whose restart has not happened yet


@dataclass(frozen=True)
class ConfigFile:
    path: str
    sha256: str
    content: bytes


@dataclass(frozen=True)
class DesiredConfig:
    """A workload entry's ``config`` block, decoded and checked (pure)."""

    digest: str | None  # the release's config digest; None: the workload has no config
    on_change: str  # restart | none
    files: tuple[ConfigFile, ...]

    @property
    def key(self) -> str:
        """The directory name: what this node's files are (not only the release digest)."""
        blob = json.dumps(
            [self.digest, self.on_change, [(f.path, f.sha256) for f in self.files]],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, workload: Mapping[str, Any]) -> DesiredConfig:
        name = workload.get("name")
        block = workload.get("config")
        if not isinstance(block, Mapping):
            return cls(None, "restart", ())
        files: list[ConfigFile] = []
        seen: set[str] = set()
        total = 0
        for f in block.get("files") or ():
            path = str(f.get("path", ""))
            where = f"workload {name!r}: config file {path!r}"
            if not _safe(path):
                raise VerifyError(f"{where}: not a relative path inside the config directory")
            if path in seen:
                raise VerifyError(f"{where}: given twice")
            seen.add(path)
            try:
                content = base64.b64decode(str(f.get("content", "")), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise VerifyError(f"{where}: content is not base64 ({exc})") from None
            if len(content) > MAX_FILE_BYTES:
                raise VerifyError(
                    f"{where}: {len(content)} bytes, over the {MAX_FILE_BYTES // 1024} KiB cap"
                )
            total += len(content)
            got = hashlib.sha256(content).hexdigest()
            if got != f.get("sha256"):
                raise VerifyError(f"{where}: sha256 {got} does not match {f.get('sha256')}")
            files.append(ConfigFile(path, got, content))
        if total > MAX_TOTAL_BYTES:
            raise VerifyError(
                f"workload {name!r}: config files total {total} bytes, over the "
                f"{MAX_TOTAL_BYTES // 1024} KiB cap"
            )
        digest = block.get("digest")
        return cls(
            str(digest) if digest else None,
            "none" if block.get("onChange") == "none" else "restart",
            tuple(files),
        )


def _safe(path: str) -> bool:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or "\\" in path or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


@dataclass(frozen=True)
class ConfigDirs:
    """The config directories of one workload under ``<root>/<name>/``."""

    dir: Path  # <root>/<name>

    @property
    def configs(self) -> Path:
        return self.dir / "configs"

    @property
    def link(self) -> Path:
        """FLEETKEEPER_CONFIG_DIR: the workload reads its files through this link."""
        return self.dir / "config"

    @property
    def previous_link(self) -> Path:
        return self.dir / "config.previous"

    def key_of(self, link: Path) -> str | None:
        """The complete config directory ``link`` points at (None: none)."""
        try:
            target = Path(os.readlink(link))
        except OSError:
            return None
        if target.parent.name != "configs" or not (self.configs / target.name / MARKER).is_file():
            return None
        return target.name

    def current_key(self) -> str | None:
        return self.key_of(self.link)

    def current_digest(self) -> str | None:
        """The release config digest of the directory in use (None: no config files)."""
        key = self.current_key()
        if key is None:
            return None
        try:
            text = (self.configs / key / MARKER).read_text("utf-8").strip()
        except OSError:
            return None
        return text or None

    def write(self, config: DesiredConfig) -> str:
        """Make ``configs/<key>`` hold ``config``'s files (complete or absent); its key."""
        key = config.key
        final = self.configs / key
        if (final / MARKER).is_file():
            return key
        self.configs.mkdir(parents=True, exist_ok=True)
        staging = self.configs / f"{_STAGING}{uuid.uuid4().hex[:12]}"
        staging.mkdir(mode=0o755)
        try:
            for f in config.files:
                dest = staging / f.path
                dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
                with open(dest, "xb") as fh:  # "x": never through a link of a half-made dir
                    fh.write(f.content)
                    fh.flush()
                    os.fsync(fh.fileno())
                dest.chmod(0o644)
            (staging / MARKER).write_text(f"{config.digest or ''}\n", "utf-8")
            if final.exists():  # an incomplete leftover (no marker)
                shutil.rmtree(final)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.configs)
        return key

    def flip(self, key: str | None) -> str | None:
        """Point ``config`` at ``configs/<key>`` atomically, the old one becoming
        ``config.previous``; returns the old key."""
        old = self.current_key()
        if key == old:
            return old
        if old is not None:
            self._point(self.previous_link, old)
        self._point(self.link, key)
        return old

    def flip_back(self, key: str | None, previous: str | None) -> None:
        """Undo a flip: ``config`` back to ``key``, ``config.previous`` to ``previous``."""
        self._point(self.link, key)
        self._point(self.previous_link, previous)

    def _point(self, link: Path, key: str | None) -> None:
        if key is None or not (self.configs / key / MARKER).is_file():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            fsync_dir(link.parent)
            return
        tmp = link.with_name(f".{link.name}.tmp-{uuid.uuid4().hex[:8]}")
        os.symlink(os.path.join("configs", key), tmp)
        os.replace(tmp, link)
        fsync_dir(link.parent)

    # -- a config flip whose restart is still owed (crash safety) ------------------------
    def owe_restart(self, to: str, back: str | None, back_previous: str | None) -> None:
        write_json(self.dir / _PENDING, {"to": to, "back": back, "backPrevious": back_previous})

    def owed(self) -> tuple[str, str | None, str | None] | None:
        """(to, back, back's previous) of a flip whose restart has not been proven yet."""
        doc = read_json(self.dir / _PENDING)
        if not isinstance(doc, dict) or not isinstance(doc.get("to"), str):
            return None
        back, back_prev = doc.get("back"), doc.get("backPrevious")
        return (
            str(doc["to"]),
            back if isinstance(back, str) else None,
            back_prev if isinstance(back_prev, str) else None,
        )

    def settle(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.dir / _PENDING)

    def prune(self) -> None:
        """Remove config directories other than the current and previous ones, and leftovers."""
        if not self.configs.is_dir():
            return
        keep = {self.current_key(), self.key_of(self.previous_link)}
        owed = self.owed()
        if owed is not None:
            keep |= set(owed)
        for p in self.configs.iterdir():
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        self._unlink_temp_links()

    def clean_leftovers(self) -> None:
        """Remove what an agent killed inside ``write`` or ``_point`` left: staging dirs
        and temp links. Run before each converge, as prune runs only after a change (a
        steady workload would keep a killed write's staging dir forever)."""
        if self.configs.is_dir():
            for p in self.configs.iterdir():
                if p.name.startswith(_STAGING):
                    shutil.rmtree(p, ignore_errors=True)
        self._unlink_temp_links()

    def _unlink_temp_links(self) -> None:
        if not self.dir.is_dir():
            return
        for p in self.dir.iterdir():
            if p.name.startswith((".config.tmp-", ".config.previous.tmp-")):
                with contextlib.suppress(OSError):
                    os.unlink(p)
