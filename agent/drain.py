"""Drain before restart: ask the old process to finish its work, wait for it, then go on.

Two forms (``drain`` in a release or model, copied into the desired document):

* ``drain: {http: URL, timeoutSeconds: N}``: the agent POSTs to ``URL`` (empty body) and
  repeats it every ``POLL`` seconds. ``200``/``204`` means idle: go on. Any other answer
  (``202 Accepted`` while requests are in flight is the convention) means busy. A POST
  that cannot connect counts as busy while the process lives (it may have closed its
  listener to drain); the old process exiting ends the wait too.
* ``drain: {file: PATH, timeoutSeconds: N}``: balena's update lock. The workload creates
  ``PATH`` while it must not be interrupted and removes it when idle. The agent waits
  until ``PATH`` is absent. It only looks: it never creates or deletes the file (the path
  comes from a fleet file, and the agent may run as root), so a workload that takes the
  lock in the instant between the agent's last look and the stop is stopped anyway.

After ``timeoutSeconds`` the agent goes on anyway and says so (:attr:`Drained.message`):
a workload that never says idle must not block updates forever.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from agent.workload import Drain

log = logging.getLogger(__name__)

POLL = 0.2


@dataclass(frozen=True)
class Drained:
    idle: bool  # False: the timeout passed while the old process was still busy
    seconds: float
    message: str


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
        idle, last = wait(target, min(max(deadline - time.monotonic(), 0.2), 2.0))
        took = time.monotonic() - began
        if idle:
            return Drained(True, took, f"drained in {took:.1f}s ({last})")
        if time.monotonic() >= deadline:
            message = f"drain timed out after {spec.timeout:.0f}s ({last}); restarted anyway"
            log.warning("%s", message)
            return Drained(False, took, message)
        time.sleep(POLL)


def _http_idle(url: str, timeout: float) -> tuple[bool, str]:
    try:
        resp = httpx.post(url, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return False, f"POST {url}: {exc}"
    return resp.status_code in (200, 204), f"POST {url} answered {resp.status_code}"


def _file_idle(path: str, _timeout: float) -> tuple[bool, str]:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True, f"update lock {path} is free"
    except OSError as exc:
        return False, f"cannot look at update lock {path}: {exc}"
    return False, f"update lock {path} is held"
