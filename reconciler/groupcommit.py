"""Group commit: writes that arrive while a transaction runs share the next one.

Each durable transaction on SQLite costs an fsync (milliseconds on real disks). Rather
than one transaction per request, requests hand their item to a ``GroupCommit`` and
wait; a single writer takes everything queued, writes it in one transaction in a worker
thread, and answers them all. With nothing queued the first item is written at once (no
added delay); under load the batch grows by itself, as PostgreSQL's WAL writer or
SQLite's own advice on batching inserts have it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, write: Callable[[Sequence[T]], None], what: str) -> None:
        self._write = write  # one transaction for all the items (runs in a worker thread)
        self._what = what
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0  # how many transactions so far (tests, metrics)

    async def submit(self, item: T) -> None:
        """Return once ``item`` is durable; raise the write's error when it is not."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await asyncio.to_thread(self._write, [item for item, _ in batch])
            except Exception as exc:  # nothing of the batch is acknowledged
                log.error("cannot store %d %s: %s", len(batch), self._what, exc)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.transactions += 1
            for _, f in batch:
                if not f.done():
                    f.set_result(None)
