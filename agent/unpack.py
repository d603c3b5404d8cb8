"""Unpack a verified artifact into a staging directory, refusing anything unsafe.

Refused: absolute member names, ``..`` components, device files and FIFOs, and symbolic or
hard links whose target leaves the unpacked root. Formats are recognised by their bytes:
gzip'd tar, zip, or else a single file (copied under the name from the URL).

Decompression bombs are refused too: the bytes written are counted *while* extracting (the
sizes in the headers are not trusted) against the artifact's ``unpackedSize``, or 100 times
the archive's size when it declares none, and against the disk, which keeps a free-space
reserve; an archive of more than ``MAX_ENTRIES`` members is refused. The staging directory
is thrown away by the caller, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO

from agent.errors import UnpackError

MAX_ENTRIES = 100_000
UNPACKED_RATIO = 100  # the bound without a declared unpackedSize, times the archive size
FREE_SPACE_RESERVE = 256 << 20  # unpacking never leaves less than this free
COPY_CHUNK = 1 << 20
RECHECK_DISK_BYTES = 64 << 20  # look at the free space again after this much
LINK_MAX = 4096  # PATH_MAX: longer symlink targets are refused


@dataclass(frozen=True)
class Limits:
    """How much one archive may write (``why`` names the bound, for the error)."""

    max_bytes: int
    why: str
    max_entries: int = MAX_ENTRIES
    reserve: int = FREE_SPACE_RESERVE


def limits_for(archive_size: int, unpacked_size: int | None) -> Limits:
    """The declared ``unpackedSize``, else ``UNPACKED_RATIO`` times the archive (pure)."""
    if unpacked_size is not None:
        return Limits(unpacked_size, f"its declared unpackedSize of {unpacked_size} bytes")
    bound = max(archive_size, 1) * UNPACKED_RATIO
    return Limits(
        bound,
        f"{UNPACKED_RATIO} times its size of {archive_size} bytes ({bound} bytes; declare "
        "artifacts[].unpackedSize in the release if it really unpacks to more)",
    )


class _Budget:
    """Counts entries and bytes as they are written; raises as soon as a bound is passed."""

    def __init__(self, dest: Path, label: str, limits: Limits) -> None:
        self.dest, self.label, self.limits = dest, label, limits
        self.written = 0
        self.entries = 0
        self._disk_left = 0
        self._check_disk()

    def _check_disk(self) -> None:
        free = shutil.disk_usage(self.dest).free
        self._disk_left = free - self.limits.reserve
        if self._disk_left <= 0:
            raise UnpackError(
                f"{self.label}: refusing to unpack: {free} bytes free in {self.dest}, below "
                f"the reserve of {self.limits.reserve} bytes; free some space"
            )

    def entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UnpackError(
                f"{self.label}: refusing to unpack: more than {self.limits.max_entries} "
                f"entries (at {name!r})"
            )

    def add(self, n: int, name: str) -> None:
        self.written += n
        self._disk_left -= n
        if self.written > self.limits.max_bytes:
            raise UnpackError(
                f"{self.label}: refusing to unpack: it expands to more than "
                f"{self.limits.why} (passed it at {name!r}, a decompression bomb?)"
            )
        if self._disk_left <= 0 or self.written % RECHECK_DISK_BYTES < n:
            self._check_disk()  # others write to this disk too: look again

    def copy(self, src: IO[bytes], out: IO[bytes], name: str) -> None:
        while chunk := src.read(COPY_CHUNK):
            self.add(len(chunk), name)
            out.write(chunk)


GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"


def detect_format(path: Path) -> str:
    """``tar.gz``, ``zip`` or ``file``."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(GZIP_MAGIC):
        return "tar.gz"
    if head.startswith(ZIP_MAGIC):
        return "zip"
    return "file"


def check_member_name(name: str, archive: str) -> str:
    """The normalised relative name, or UnpackError when it is absolute or climbs out (pure)."""
    if name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or ":" in name[:3]:
        raise UnpackError(f"{archive}: refusing absolute path {name!r}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise UnpackError(f"{archive}: refusing path with '..': {name!r}")
    clean = posixpath.normpath("/".join(p for p in parts if p not in ("", ".")) or ".")
    return clean


def check_link_target(member: str, target: str, archive: str) -> None:
    """A link at ``member`` pointing to ``target`` must stay inside the root (pure)."""
    if target.startswith("/") or PurePosixPath(target).is_absolute():
        raise UnpackError(f"{archive}: refusing link {member!r} -> absolute {target!r}")
    base = posixpath.dirname(member)
    joined = posixpath.normpath(posixpath.join(base, target))
    if joined == ".." or joined.startswith(("../", "/")):
        raise UnpackError(f"{archive}: refusing link {member!r} -> {target!r} (escapes the root)")


def unpack(
    artifact: Path,
    dest: Path,
    *,
    filename: str,
    unpacked_size: int | None = None,
    max_entries: int = MAX_ENTRIES,
) -> str:
    """Unpack ``artifact`` into the empty directory ``dest``; returns the format used.

    ``unpacked_size`` is the artifact's declared ``unpackedSize`` (see :func:`limits_for`).
    """
    fmt = detect_format(artifact)
    limits = limits_for(artifact.stat().st_size, unpacked_size)
    budget = _Budget(dest, filename, replace(limits, max_entries=max_entries))
    if fmt == "tar.gz":
        _untar(artifact, dest, filename, budget)
    elif fmt == "zip":
        _unzip(artifact, dest, filename, budget)
    else:
        name = check_member_name(filename, filename)
        if "/" in name or name in (".", ""):
            raise UnpackError(f"cannot place single-file artifact named {filename!r}")
        target = dest / name
        budget.entry(name)
        with open(artifact, "rb") as src, open(target, "wb") as out:
            budget.copy(src, out, name)
        os.chmod(target, 0o755)
    check_tree(dest, filename)
    return fmt


def _check_tar_member(m: tarfile.TarInfo, dest: Path, label: str) -> tuple[str, tarfile.TarInfo]:
    """The member's clean name and its copy sanitised by tarfile's 'data' filter."""
    name = check_member_name(m.name, label)
    if m.isdev() or m.isfifo() or m.ischr() or m.isblk():
        raise UnpackError(f"{label}: refusing device or FIFO {m.name!r}")
    if m.issym():
        check_link_target(name, m.linkname, label)
    elif m.islnk():
        # Hard link targets are archive-relative names.
        check_member_name(m.linkname, label)
    elif not (m.isfile() or m.isdir()):
        raise UnpackError(f"{label}: refusing special member {m.name!r}")
    try:
        # The 'data' filter repeats these checks inside tarfile (defence in depth).
        safe = tarfile.data_filter(m, str(dest))
    except tarfile.FilterError as exc:
        raise UnpackError(f"{label}: refused by the tar safety filter: {exc}") from exc
    return name, safe


def _untar(artifact: Path, dest: Path, label: str, budget: _Budget) -> None:
    # Members are read one by one (never all headers first) and written by us, counting
    # every byte that comes out of the decompressor.
    links: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            for m in tar:
                budget.entry(m.name)
                name, safe = _check_tar_member(m, dest, label)
                target = dest / name
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if m.issym() or m.islnk():
                    links.append((target, m))
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise UnpackError(f"{label}: cannot read member {m.name!r}")
                with src, open(target, "wb") as out:
                    budget.copy(src, out, name)
                os.chmod(target, (safe.mode & 0o755) if safe.mode else 0o644)
            # Links last, so no file is ever written through one.
            for target, m in links:
                target.parent.mkdir(parents=True, exist_ok=True)
                if m.issym():
                    os.symlink(m.linkname, target)
                    continue
                source = dest / check_member_name(m.linkname, label)
                if source.is_symlink() or not source.is_file():
                    raise UnpackError(
                        f"{label}: refusing hard link {m.name!r} -> {m.linkname!r} "
                        "(not a file of the archive)"
                    )
                os.link(source, target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UnpackError(f"{label}: cannot unpack tar.gz: {exc}") from exc


def check_tree(dest: Path, label: str) -> None:
    """After unpacking: every symlink must resolve inside ``dest`` (catches link chains)."""
    root = Path(os.path.realpath(dest))
    for dirpath, dirnames, filenames in os.walk(dest):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                real = Path(os.path.realpath(p))
                if real != root and root not in real.parents:
                    raise UnpackError(
                        f"{label}: refusing link {p.relative_to(dest)} -> {os.readlink(p)!r} "
                        "(resolves outside the root)"
                    )


def _unzip(artifact: Path, dest: Path, label: str, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(artifact) as zf:
            infos = zf.infolist()
            for info in infos:
                budget.entry(info.filename)
            for info in infos:
                name = check_member_name(info.filename, label)
                mode = info.external_attr >> 16
                kind = stat.S_IFMT(mode)
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                    raise UnpackError(f"{label}: refusing special member {info.filename!r}")
                if kind == stat.S_IFLNK:
                    check_link_target(name, _zip_link(zf, info, label), label)
            links = []
            for info in infos:
                name = check_member_name(info.filename, label)
                mode = info.external_attr >> 16
                target = dest / name
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                if stat.S_IFMT(mode) == stat.S_IFLNK:
                    links.append((target, _zip_link(zf, info, label)))
                    continue
                with zf.open(info) as src, open(target, "wb") as out:
                    budget.copy(src, out, name)
                perm = stat.S_IMODE(mode)
                os.chmod(target, (perm & 0o755) if perm else 0o644)
            # Links last, so no file is ever written through one.
            for target, link in links:
                os.symlink(link, target)
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        raise UnpackError(f"{label}: cannot unpack zip: {exc}") from exc


def _zip_link(zf: zipfile.ZipFile, info: zipfile.ZipInfo, label: str) -> str:
    """A zip symlink's target (its content), read with a bound: it is held in memory."""
    with zf.open(info) as src:
        target = src.read(LINK_MAX + 1)
    if len(target) > LINK_MAX:
        raise UnpackError(f"{label}: refusing link {info.filename!r} (target too long)")
    return target.decode("utf-8")
