"""SHA-256 and size of an artifact: from a local file, or by streaming its URL (with a
progress bar on stderr). Nothing is kept on disk: only the digest and the byte count."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from reconciler.errors import FleetkeeperError, sanitize

CHUNK = 1 << 20


class ArtifactError(FleetkeeperError):
    reason = "ArtifactError"


@dataclass(frozen=True)
class Digest:
    sha256: str
    size: int


def _hash(
    chunks: Iterable[bytes], progress: Progress | None = None, task: TaskID | None = None
) -> Digest:
    h = hashlib.sha256()
    size = 0
    for chunk in chunks:
        h.update(chunk)
        size += len(chunk)
        if progress is not None and task is not None:
            progress.advance(task, len(chunk))
    return Digest(h.hexdigest(), size)


def of_file(path: Path) -> Digest:
    try:
        with path.open("rb") as f:
            return _hash(iter(lambda: f.read(CHUNK), b""))
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror}") from exc


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def of_url(url: str, *, console: Console | None = None, timeout: float = 30.0) -> Digest:
    """Stream ``url`` through SHA-256 (redirects followed, as the agent's download does)."""
    shown = sanitize(url)
    console = console or Console(stderr=True)
    try:
        with (
            httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as resp,
            _progress(console) as progress,
        ):
            if resp.status_code != 200:
                raise ArtifactError(f"{shown}: HTTP {resp.status_code}")
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            task = progress.add_task(f"sha256 {shown.rsplit('/', 1)[-1]}", total=total)
            digest = _hash(resp.iter_bytes(CHUNK), progress, task)
    except httpx.HTTPError as exc:
        raise ArtifactError(f"cannot download {shown}: {exc.__class__.__name__}: {exc}") from exc
    if total is not None and digest.size != total:
        raise ArtifactError(f"{shown}: got {digest.size} bytes, Content-Length said {total}")
    return digest
