"""Fetch an artifact to a file beside its destination, hashing while streaming.

* ``http(s)://`` with httpx; a partial file (``<sha256>.part``) is resumed with ``Range`` when
  the server answers 206, restarted from zero otherwise. A connection that drops mid-body is
  retried a few times, each time resuming.
* ``file://`` for labs.
* Size and SHA-256 are checked before the caller touches anything; a mismatch deletes the
  bytes (they are wrong, resuming them would not help) and raises :class:`VerifyError`.
  The size is known in advance (``artifacts[].size`` is required): no more than ``size``
  bytes are ever read, and a server that announces or sends more is refused.
* Free disk space is checked first (the artifact plus room to unpack it).
* Failures are classified for the converge step: the network, an artifact server that is
  not ready (5xx, 408, 425, 429) and a full disk raise :class:`Unreachable` (transient,
  retried with backoff); another 4xx is a :class:`DownloadError` (the version's URL).
* ``superseded()`` is asked between chunks: once a newer desired generation has arrived the
  download is dropped, its partial file too (it is not resumed later), with
  :class:`Superseded`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent.errors import DownloadError, Superseded, Unreachable, VerifyError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # 1 MiB reads: hashing keeps up with raw hashlib
PROGRESS_MIN_BYTES = 8 << 20
PROGRESS_EVERY_SECONDS = 2.0
ATTEMPTS = 5
# answers that mean "later" rather than "no" (besides every 5xx)
RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    resumed_from: int
    seconds: float
    verify_seconds: float


def sha256_file(path: Path, *, offset_limit: int | None = None, chunk: int = CHUNK) -> str:
    """SHA-256 of ``path`` (or of its first ``offset_limit`` bytes), read in large chunks."""
    return _hash_prefix(path, offset_limit, chunk).hexdigest()


def _hash_prefix(path: Path, limit: int | None, chunk: int = CHUNK) -> hashlib._Hash:
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    remaining = limit
    with open(path, "rb", buffering=0) as fh:
        while remaining is None or remaining > 0:
            want = chunk if remaining is None else min(chunk, remaining)
            n = fh.readinto(view[:want])
            if not n:
                break
            h.update(view[:n])
            if remaining is not None:
                remaining -= n
    return h


def redact(url: str) -> str:
    """``url`` without credentials or query string (tokens live there)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_free_space(directory: Path, needed: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise Unreachable(
            f"not enough disk space in {directory}: need {needed} bytes, {free} free; "
            "free some space or move installRoot"
        )


class _Progress:
    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total = label, total
        self.last = time.monotonic()

    def update(self, done: int) -> None:
        if self.total is None or self.total < PROGRESS_MIN_BYTES:
            return
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_SECONDS:
            self.last = now
            log.info(
                "downloading %s: %d/%d MiB (%.0f%%)",
                self.label,
                done >> 20,
                self.total >> 20,
                100 * done / self.total,
            )


def fetch(
    url: str,
    dest_dir: Path,
    *,
    sha256: str,
    size: int,
    on_phase: Callable[[str], None] | None = None,
    timeout: float = 30.0,
    superseded: Callable[[], bool] | None = None,
) -> Downloaded:
    """Download ``url`` into ``dest_dir/<sha256>`` and verify it; return where it is."""
    stale = superseded or (lambda: False)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / sha256
    part = dest_dir / f"{sha256}.part"
    started = time.monotonic()
    if final.exists():
        # Verified earlier by a run that was killed before unpacking; verify again anyway.
        os.replace(final, part)
    check_free_space(dest_dir, 2 * size - _size(part))
    scheme = urllib.parse.urlsplit(url).scheme
    try:
        if scheme == "file":
            h, resumed = _copy_file(url, part, size, stale)
        elif scheme in ("http", "https"):
            try:
                h, resumed = _download_http(url, part, size, timeout, stale)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise Unreachable(f"disk full while downloading {redact(url)}: {exc}") from exc
                raise DownloadError(f"cannot write {part}: {exc}") from exc
        else:
            raise DownloadError(f"unsupported artifact URL scheme {scheme!r} in {redact(url)}")
    except (Superseded, VerifyError):
        _discard(part)  # stale or wrong bytes: never resumed
        raise
    download_done = time.monotonic()
    if on_phase:
        on_phase("Verifying")
    actual_size = _size(part)
    actual = h.hexdigest()
    if actual_size != size:
        _discard(part)
        # never what was read: a document could point at a local file to learn its size
        raise VerifyError(f"size mismatch for {redact(url)}: not the expected {size} bytes")
    if actual != sha256:
        _discard(part)
        # never the digest read: it would tell a forged document what a local file holds
        raise VerifyError(f"sha256 mismatch for {redact(url)}: not the expected {sha256}")
    os.replace(part, final)
    done = time.monotonic()
    return Downloaded(
        final, actual_size, actual, resumed, download_done - started, done - download_done
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _copy_file(
    url: str, part: Path, size: int, stale: Callable[[], bool]
) -> tuple[hashlib._Hash, int]:
    src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    h = hashlib.sha256()
    progress = _Progress(str(src), size)
    done = 0
    try:
        with open(src, "rb", buffering=0) as fin, open(part, "wb") as fout:
            while chunk := fin.read(min(CHUNK, size + 1 - done)):
                if stale():
                    raise Superseded(f"stopped copying {src}: a newer desired state arrived")
                done += len(chunk)
                if done > size:
                    raise VerifyError(f"{src} is larger than the expected {size} bytes")
                h.update(chunk)
                fout.write(chunk)
                progress.update(done)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise DownloadError(f"cannot copy artifact {src}: {exc}") from exc
    return h, 0


def _download_http(
    url: str, part: Path, size: int, timeout: float, stale: Callable[[], bool]
) -> tuple[hashlib._Hash, int]:
    """Stream ``url`` into ``part``, resuming with Range; (hash of all bytes, resumed from).

    One function on purpose (~65 lines): the resume state (bytes on disk and their running
    hash) is changed by every branch of one retry loop, and split it would travel through
    each piece and back.
    """
    have = _size(part)
    if have > size:
        _discard(part)
        have = 0
    h = _hash_prefix(part, have) if have else hashlib.sha256()
    resumed_from = have
    last_error: Exception | None = None
    with httpx.Client(timeout=timeout, follow_redirects=True, trust_env=False) as client:
        for attempt in range(ATTEMPTS):
            if have == size:
                return h, resumed_from
            if stale():
                raise Superseded(f"dropped the download of {redact(url)}: a newer desired state")
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with client.stream("GET", url, headers=headers) as resp:
                    if resp.status_code == 416 and have:
                        # Our partial file is not a prefix the server recognises: start over.
                        _discard(part)
                        have, h = 0, hashlib.sha256()
                        continue
                    if resp.status_code not in (200, 206):
                        code = resp.status_code
                        if code >= 500 or code in RETRY_STATUS:
                            # the server is there but not ready: not the version's fault
                            raise Unreachable(f"GET {redact(url)}: HTTP {code}")
                        raise DownloadError(
                            f"GET {redact(url)}: HTTP {code}; check the artifact URL"
                        )
                    if have and resp.status_code == 200:
                        log.info("server ignored Range for %s; downloading again", redact(url))
                        have, h = 0, hashlib.sha256()
                    elif have:
                        log.info("resuming %s at byte %d", redact(url), have)
                    announced = resp.headers.get("content-length")
                    announced_more = (
                        announced is not None
                        and announced.isdigit()
                        and have + int(announced) > size
                    )
                    if announced_more:
                        raise VerifyError(
                            f"{redact(url)} announces {have + int(announced or 0)} bytes, "
                            f"more than the expected {size}"
                        )
                    progress = _Progress(redact(url), size)
                    with open(part, "ab" if have else "wb") as fh:
                        # No chunk_size: bytes reach the disk as they arrive, so a drop
                        # mid-body loses nothing that was received.
                        for chunk in resp.iter_bytes():
                            if stale():
                                raise Superseded(
                                    f"dropped the download of {redact(url)} at byte {have}: "
                                    "a newer desired state arrived"
                                )
                            if have + len(chunk) > size:
                                # Never keep (or read on) past the size the release gives.
                                raise VerifyError(
                                    f"{redact(url)} sends more than the expected {size} bytes"
                                )
                            h.update(chunk)
                            fh.write(chunk)
                            have += len(chunk)
                            progress.update(have)
                        fh.flush()
                        os.fsync(fh.fileno())
                    return h, resumed_from
            except httpx.HTTPError as exc:
                last_error = exc
                log.warning(
                    "download of %s interrupted at byte %d (attempt %d/%d): %s",
                    redact(url),
                    _size(part),
                    attempt + 1,
                    ATTEMPTS,
                    exc,
                )
                # Continue from what is on disk; the hash must match those bytes exactly.
                have = _size(part)
                h = _hash_prefix(part, have) if have else hashlib.sha256()
                time.sleep(min(0.1 * 2**attempt, 2.0))
    # connection refused, DNS, no route, timeouts, drops: the network, not the version
    raise Unreachable(f"GET {redact(url)} failed after {ATTEMPTS} attempts: {last_error}")
