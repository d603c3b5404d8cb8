"""Files and folders of the reconciler's state: owner-only, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.errors import ConfigError


def private_file(path: Path) -> None:
    """Create ``path`` (and its folder) readable by the owner only, whatever the umask.

    The database holds token hashes and the audit log. SQLite gives its -wal and -shm
    files the database file's mode, so making the file 0600 first covers all three;
    an existing file is tightened too (it may come from a version that left it 0644).
    """
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot open database {path}: {exc.strerror}") from exc
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def private_dir(path: Path) -> None:
    """``path`` as a folder only its owner can enter (0700), created when missing."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; an old folder may be 0755
    except OSError as exc:
        raise ConfigError(f"cannot create the private folder {path}: {exc.strerror}") from exc
