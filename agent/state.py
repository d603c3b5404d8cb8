"""The agent's state directory: node token, last desired doc, failed versions, process records.

Every write is atomic (temp file + fsync + os.replace), so a kill at any instant leaves the
old or the new content, never a torn file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort on platforms that refuse)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path: Path, doc: Any, mode: int = 0o644) -> None:
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode(), mode)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable (a torn file is ignored)."""
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class StateDir:
    """Paths inside the agent's state directory."""

    root: Path

    @property
    def token_file(self) -> Path:
        return self.root / "node.token"

    @property
    def desired_file(self) -> Path:
        return self.root / "desired.json"

    @property
    def failed_file(self) -> Path:
        return self.root / "failed.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "agent.lock"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def timings_file(self) -> Path:
        return self.root / "timings.jsonl"

    @property
    def requests_dir(self) -> Path:
        return self.root / "requests"

    def process_file(self, name: str) -> Path:
        return self.root / "processes" / f"{name}.json"

    def journal_file(self, name: str) -> Path:
        return self.root / "journal" / f"{name}.json"

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def workload_state(self, name: str) -> Path:
        return self.root / "workloads" / name

    def ensure(self) -> None:
        """Create the directory 0700, owned by the agent: it holds the node credential, and
        a workload running as another user must not even list it."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self.root.stat().st_uid
        if owner != os.geteuid():
            raise ConfigError(
                f"stateDir {self.root} is owned by uid {owner}, not by the agent's uid "
                f"{os.geteuid()}: chown it to the agent's user"
            )
        os.chmod(self.root, 0o700)

    # -- node token ---------------------------------------------------------------------
    def read_token(self) -> str | None:
        try:
            token = self.token_file.read_text("utf-8").strip()
        except OSError:
            return None
        return token or None

    def write_token(self, token: str) -> None:
        write_atomic(self.token_file, token.encode(), mode=0o600)

    # -- last desired document ----------------------------------------------------------
    def read_desired(self) -> tuple[dict[str, Any] | None, str | None]:
        doc = read_json(self.desired_file)
        if not isinstance(doc, dict) or not isinstance(doc.get("document"), dict):
            return None, None
        etag = doc.get("etag")
        return doc["document"], etag if isinstance(etag, str) else None

    def write_desired(self, document: dict[str, Any], etag: str | None) -> None:
        write_json(self.desired_file, {"document": document, "etag": etag})

    # -- failed (version, sha256) pairs -------------------------------------------------
    def read_failed(self) -> dict[str, dict[str, Any]]:
        doc = read_json(self.failed_file)
        return doc if isinstance(doc, dict) else {}

    def write_failed(self, failed: dict[str, dict[str, Any]]) -> None:
        write_json(self.failed_file, failed)


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``path``; yields False (not held) when non-blocking and busy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
