"""The poll step: long-poll the desired state (ETag) and accept a new document.

A new document for this node is stored in the state directory first (a restarted agent
converges from it while the reconciler is unreachable), then published to the converge
thread through :class:`Latest`. Checks on a received document before it is accepted
(its node, later its signature) belong in :func:`accept`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.client import ServerClient
from agent.errors import AgentError, ConfigError
from agent.state import StateDir

log = logging.getLogger(__name__)

MIN_POLL_SECONDS = 1.0


class Latest:
    """The latest accepted desired document and its ETag, shared by the agent's threads;
    ``arrived`` wakes the converge thread."""

    def __init__(self, document: dict[str, Any] | None, etag: str | None) -> None:
        self._lock = threading.Lock()
        self._document, self._etag = document, etag
        self.arrived = threading.Event()

    @property
    def document(self) -> dict[str, Any] | None:
        with self._lock:
            return self._document

    @property
    def etag(self) -> str | None:
        with self._lock:
            return self._etag

    def put(self, document: dict[str, Any], etag: str | None) -> None:
        with self._lock:
            self._document, self._etag = document, etag
        self.arrived.set()


def accept(doc: dict[str, Any], node: str) -> str | None:
    """Why a received document is refused (None: accept it)."""
    if doc.get("node") != node:
        return f"ignoring desired state for node {doc.get('node')!r}"
    return None


def poll_loop(
    client: ServerClient,
    latest: Latest,
    state: StateDir,
    *,
    node: str,
    wait_seconds: int,
    stop: threading.Event,
    backoff: Callable[[int], float],
) -> None:
    """Poll until ``stop`` is set; back off (``backoff(failures)`` seconds) on errors."""
    failures = 0
    while not stop.is_set():
        asked = time.monotonic()
        try:
            doc, etag, changed = client.desired(latest.etag, wait_seconds)
        except ConfigError as exc:
            log.error("%s", exc)
            failures += 1
            stop.wait(backoff(failures))
            continue
        except AgentError as exc:
            failures += 1
            delay = backoff(failures)
            log.warning("poll failed (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay)
            continue
        failures = 0
        if changed and doc is not None:
            refused = accept(doc, node)
            if refused:
                log.error("%s", refused)
                stop.wait(1.0)
                continue
            state.write_desired(doc, etag)
            latest.put(doc, etag)
            log.info(
                "desired state generation %s (revision %s)",
                doc.get("generation"),
                (doc.get("revision") or "-")[:12],
            )
        elif time.monotonic() - asked < MIN_POLL_SECONDS:
            # No news and no long-poll held (wait=0, no document yet, a proxy that answers
            # at once): do not spin.
            stop.wait(MIN_POLL_SECONDS)
