"""Drain before restart: ask the old process to finish its work, wait for it, then go on.

Two forms (``drain`` in a release or model, copied into the desired document):

* ``drain: {http: URL, timeoutSeconds: N}``: the agent POSTs to ``URL`` (empty body) and
  repeats it every ``POLL`` seconds. ``200``/``204`` means idle: go on. Any other answer
  (``202 Accepted`` while requests are in flight is the convention) means busy. A POST
  that cannot connect counts as busy while the process lives (it may have closed its
  listener to drain); the old process exiting ends the wait too.
* ``drain: {file: PATH, timeoutSeconds: N}``: balena's update lock. The workload creates
  ``PATH`` while it must not be interrupted and removes it when idle. The agent waits
  until ``PATH`` is absent, then creates it itself (``O_EXCL``, so it and the workload
  cannot both think they hold it) and removes it once the restart is done.

After ``timeoutSeconds`` the agent goes on anyway and says so (:attr:`Drained.message`):
a workload that never says idle must not block updates forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent.workload import Drain

log = logging.getLogger(__name__)

POLL = 0.2
LOCK_TEXT = b"fleetkeeper-agent: restarting\n"


@dataclass(frozen=True)
class Drained:
    idle: bool  # False: the timeout passed while the old process was still busy
    seconds: float
    message: str
    lock: Path | None = None  # the update lock the agent now holds (file form)

    def release(self) -> None:
        """Give the update lock back (the new version may take it when busy)."""
        if self.lock is not None:
            with contextlib.suppress(OSError):
                self.lock.unlink()


def drain(spec: Drain, alive: Callable[[], bool]) -> Drained:
    """Drain as ``spec`` says; ``alive`` tells whether the old process still runs."""
    began = time.monotonic()
    deadline = began + spec.timeout
    wait = _http_idle if spec.http is not None else _file_idle
    target = spec.http if spec.http is not None else str(spec.file)
    last = "not asked yet"
    while True:
        if not alive():
            return Drained(True, time.monotonic() - began, "the old process exited while draining")
        idle, last, lock = wait(target, min(max(deadline - time.monotonic(), 0.2), 2.0))
        took = time.monotonic() - began
        if idle:
            return Drained(True, took, f"drained in {took:.1f}s ({last})", lock)
        if time.monotonic() >= deadline:
            message = f"drain timed out after {spec.timeout:.0f}s ({last}); restarted anyway"
            log.warning("%s", message)
            return Drained(False, took, message)
        time.sleep(POLL)


def _http_idle(url: str, timeout: float) -> tuple[bool, str, Path | None]:
    try:
        resp = httpx.post(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"POST {url}: {exc}", None
    if resp.status_code in (200, 204):
        return True, f"POST {url} answered {resp.status_code}", None
    return False, f"POST {url} answered {resp.status_code}", None


def _file_idle(path: str, _timeout: float) -> tuple[bool, str, Path | None]:
    lock = Path(path)
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False, f"update lock {path} is held", None
    except FileNotFoundError:
        # No directory for the lock: the workload never took it, so it is not busy.
        return True, f"no update lock at {path}", None
    except OSError as exc:
        return False, f"cannot take update lock {path}: {exc}", None
    try:
        os.write(fd, LOCK_TEXT)
    finally:
        os.close(fd)
    return True, f"update lock {path} is free", lock
