"""Unpack a verified artifact into a staging directory, refusing anything unsafe.

Refused: absolute member names, ``..`` components, device files and FIFOs, and symbolic or
hard links whose target leaves the unpacked root. Formats are recognised by their bytes:
gzip'd tar, zip, or else a single file (copied under the name from the URL).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from agent.errors import UnpackError

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


def unpack(artifact: Path, dest: Path, *, filename: str) -> str:
    """Unpack ``artifact`` into the empty directory ``dest``; returns the format used."""
    fmt = detect_format(artifact)
    if fmt == "tar.gz":
        _untar(artifact, dest, filename)
    elif fmt == "zip":
        _unzip(artifact, dest, filename)
    else:
        name = check_member_name(filename, filename)
        if "/" in name or name in (".", ""):
            raise UnpackError(f"cannot place single-file artifact named {filename!r}")
        target = dest / name
        shutil.copyfile(artifact, target)
        os.chmod(target, 0o755)
    check_tree(dest, filename)
    return fmt


def _untar(artifact: Path, dest: Path, label: str) -> None:
    try:
        with tarfile.open(artifact, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
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
            # The 'data' filter repeats these checks inside tarfile (defence in depth).
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise UnpackError(f"{label}: refused by the tar safety filter: {exc}") from exc
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


def _unzip(artifact: Path, dest: Path, label: str) -> None:
    try:
        with zipfile.ZipFile(artifact) as zf:
            infos = zf.infolist()
            for info in infos:
                name = check_member_name(info.filename, label)
                mode = info.external_attr >> 16
                kind = stat.S_IFMT(mode)
                if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                    raise UnpackError(f"{label}: refusing special member {info.filename!r}")
                if kind == stat.S_IFLNK:
                    check_link_target(name, zf.read(info).decode("utf-8"), label)
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
                    links.append((target, zf.read(info).decode("utf-8")))
                    continue
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                perm = stat.S_IMODE(mode)
                os.chmod(target, (perm & 0o755) if perm else 0o644)
            # Links last, so no file is ever written through one.
            for target, link in links:
                os.symlink(link, target)
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as exc:
        raise UnpackError(f"{label}: cannot unpack zip: {exc}") from exc
