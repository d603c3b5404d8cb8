"""Group commit: writes that arrive while a transaction runs share the next one.

Each durable transaction on SQLite costs an fsync (milliseconds on real disks). Rather
than one transaction per request, requests hand their item to a ``GroupCommit`` and
wait; a single writer takes everything queued, writes it in one transaction in a worker
thread, and answers them all. With nothing queued the first item is written at once (no
added delay); under load the batch grows by itself, as PostgreSQL's WAL writer or
SQLite's own advice on batching inserts have it.

The writer has a thread of its own rather than one of the loop's shared worker threads:
under a flood of requests those are all taken by the requests' own blocking steps, and a
commit queued behind them would keep every one of them waiting.

The write returns one result per item (in order), handed back to that item's caller:
a registration learns whether its own claim was stored or refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    def __init__(self, write: Callable[[Sequence[T]], Sequence[R]], what: str) -> None:
        # one transaction for all the items (in the writer thread), a result per item
        self._write = write
        self._what = what
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"commit {what}")
        self.transactions = 0  # how many transactions so far (tests, metrics)

    async def submit(self, item: T) -> R:
        """Return ``item``'s result once it is durable; raise the write's error if not."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                items = [item for item, _ in batch]
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._thread, self._write, items)
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} {self._what}")
            except Exception as exc:  # nothing of the batch is acknowledged
                log.error("cannot store %d %s: %s", len(batch), self._what, exc)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            self.transactions += 1
            for (_, f), result in zip(batch, results, strict=True):
                if not f.done():
                    f.set_result(result)
