"""Delivering notifications in the background: one queue and one worker task per receiver.

``submit`` is called from whatever thread appends an audit event (the reconcile pass runs in
a worker thread): it only hands the event to the event loop, so a slow or dead receiver
never delays a pass. Each worker sends its queue in order; a failed attempt (a transport
error, a timeout, HTTP 408/425/429 or 5xx) is retried after ``backoff``, doubled each time
(at most ``MAX_BACKOFF``, with jitter); any other 4xx gives up at once (a wrong URL or key
does not heal). A full queue drops the new notification. Every outcome is counted through
``count(receiver, result)`` with result ``delivered``, ``retried``, ``failed`` or ``dropped``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence

import httpx

from reconciler.config import Receiver
from reconciler.errors import sanitize
from reconciler.notify.messages import Notification, notification_for, render
from reconciler.store.base import AuditEvent
from reconciler.threadsafe import call_in_loop

log = logging.getLogger(__name__)

QUEUE_MAX = 1000
MAX_BACKOFF = 300.0
JITTER = 0.1
_RETRY_STATUS = frozenset({408, 425, 429})


def _nothing(receiver: str, result: str) -> None:
    return None


class Notifier:
    def __init__(
        self,
        receivers: Sequence[Receiver],
        count: Callable[[str, str], None] = _nothing,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.receivers = tuple(receivers)
        self.count = count
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, asyncio.Queue[Notification]] = {}
        self._early: list[Notification] = []  # submitted before ``run`` started
        self._lock = threading.Lock()

    def submit(self, event: AuditEvent) -> None:
        """Queue ``event`` for every receiver that wants it (thread-safe, never blocks)."""
        if not self.receivers:
            return
        n = notification_for(event, str(uuid.uuid4()))
        if n is None:
            return
        with self._lock:  # against ``run`` starting meanwhile: nothing falls between
            loop = self._loop
            if loop is None or loop.is_closed():
                self._early.append(n)
                return
        call_in_loop(loop, self._enqueue, n)

    def _enqueue(self, n: Notification) -> None:
        for r in self.receivers:
            if n.event not in r.events:
                continue
            try:
                self._queues[r.name].put_nowait(n)
            except asyncio.QueueFull:
                self.count(r.name, "dropped")
                log.error("notify %s: queue full (%d), dropped: %s", r.name, QUEUE_MAX, n.message)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; what is still queued then is dropped (and logged)."""
        if not self.receivers:
            await stop.wait()
            return
        self._queues = {r.name: asyncio.Queue(QUEUE_MAX) for r in self.receivers}
        with self._lock:
            self._loop = asyncio.get_running_loop()
            early, self._early = self._early, []
        for n in early:
            self._enqueue(n)
        async with httpx.AsyncClient(follow_redirects=False) as client:
            workers = [
                asyncio.create_task(self._work(r, client), name=f"notify-{r.name}")
                for r in self.receivers
            ]
            try:
                await stop.wait()
            finally:
                self._loop = None
                for w in workers:
                    w.cancel()
                for w in workers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await w
                left = sum(q.qsize() for q in self._queues.values())
                if left:
                    log.warning("notify: %d notification(s) not sent before shutdown", left)

    async def _work(self, r: Receiver, client: httpx.AsyncClient) -> None:
        queue = self._queues[r.name]
        while True:
            n = await queue.get()
            try:
                await self._deliver(r, n, client)
            except Exception:  # a bug must not stop the receiver's worker
                log.exception("notify %s: delivering %s failed", r.name, n.id)

    async def _deliver(self, r: Receiver, n: Notification, client: httpx.AsyncClient) -> None:
        delay = r.backoff
        why = ""
        for attempt in range(1, r.attempts + 1):
            out = render(r, n, self.clock())
            retry_after: float | None = None
            try:
                resp = await client.post(
                    out.url, content=out.body, headers=out.headers, timeout=r.timeout
                )
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {sanitize(str(exc)) or 'no answer'}"
            else:
                if resp.status_code < 300:
                    self.count(r.name, "delivered")
                    log.info("notify %s: %s delivered (attempt %d)", r.name, n.event, attempt)
                    return
                why = f"HTTP {resp.status_code}"
                if resp.status_code < 500 and resp.status_code not in _RETRY_STATUS:
                    break  # the receiver refuses this request: retrying will not help
                header = resp.headers.get("retry-after", "")
                retry_after = float(header) if header.isdigit() else None
            if attempt == r.attempts:
                break
            self.count(r.name, "retried")
            wait = min(retry_after or delay, MAX_BACKOFF) * random.uniform(1 - JITTER, 1 + JITTER)
            log.warning(
                "notify %s: attempt %d/%d failed (%s); next in %.1fs",
                r.name,
                attempt,
                r.attempts,
                why,
                wait,
            )
            await asyncio.sleep(wait)
            delay *= 2
        self.count(r.name, "failed")
        log.error("notify %s: gave up on %s %s: %s", r.name, n.event, n.id, why)
