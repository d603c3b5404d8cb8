"""Leader election: a PostgreSQL session advisory lock on a connection of its own.

Why a session lock rather than a lease row: PostgreSQL itself releases the lock the
moment the holder's session ends (the process died, its connection was closed or
terminated, PostgreSQL restarted), with no clock on either side and no renewal that a
paused process could miss. A lease row needs every replica's clock and a renewal loop,
and still needs a fence for the holder that pauses past its lease. The lock's weakness
is the opposite one: a session that is cut off from the database without being ended
(a partition) keeps the lock until the server notices, so the leader also confirms its
session every ``lease / 10`` seconds and steps down when it cannot for ``lease / 2``;
the writes of a deposed leader are refused by the database (``fencing``).

Each tick (``lease / 10``, 1 s by default) a follower tries ``pg_try_advisory_lock``;
the leader reads the ``fleetkeeper_leader`` row (its session is alive, and nobody took
over). Both upsert their ``fleetkeeper_replicas`` row and read all of them back for
``fleetkeeper status``. Any error closes the connection and steps down; the next try
reconnects (a PostgreSQL restart: reconnect, re-elect).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from reconciler.replicas import fencing
from reconciler.store import redact_url
from reconciler.store.postgres import connection_params

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 3


@dataclass(frozen=True)
class Replica:
    name: str
    url: str
    leader: bool
    last_seen: float


class Leadership:
    def __init__(
        self,
        url: str,
        name: str,
        incarnation: str,
        lease: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self.name = name
        self.incarnation = incarnation
        self.url = ""
        self.application_name = f"fleetkeeper-leader {name}"[:63]
        self.lease = lease
        self.tick = lease / 10
        self._clock = clock
        self.leading = False
        self.epoch: int | None = None
        self.replicas: tuple[Replica, ...] = ()
        self.connected = False
        self._started = clock()
        self._changed = asyncio.Condition()
        self.on_change: Callable[[bool], None] = lambda leading: None

    # -- what the rest of the replica reads -------------------------------------------

    async def wait_until(self, leading: bool, stop: asyncio.Event) -> bool:
        """Until this replica leads (``leading``) or follows; False when ``stop`` came first."""
        async with self._changed:
            while self.leading != leading and not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick):
                        await self._changed.wait()
        return not stop.is_set()

    async def _set(self, leading: bool, epoch: int | None = None) -> None:
        if leading == self.leading:
            return
        self.leading, self.epoch = leading, epoch
        if leading:
            log.warning("replica %s leads (epoch %s)", self.name, epoch)
        else:
            log.warning("replica %s stopped leading", self.name)
        self.on_change(leading)
        async with self._changed:
            self._changed.notify_all()

    # -- the election ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Elect, confirm, step down, reconnect: until ``stop`` (the lock is released then)."""
        backoff = self.tick
        # the same libpq parameters as the store's, named so an operator can tell it apart
        conninfo = make_conninfo(
            **{**connection_params(self._url), "application_name": self.application_name}
        )
        while not stop.is_set():
            conn: AsyncConnection[TupleRow] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                await fencing.install(conn)
                self.connected, backoff = True, self.tick
                while not stop.is_set():
                    async with asyncio.timeout(self.lease / 2):
                        await self._tick(conn)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.tick)
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("leader election on %s: %s", self.name, redact_url(_first_line(exc)))
            finally:
                self.connected = False
                await self._set(False)
                if conn is not None:
                    await _close(conn)  # ends the session: PostgreSQL releases the lock
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, self.lease / 2)

    async def _tick(self, conn: AsyncConnection[TupleRow]) -> None:
        if self.leading:
            cur = await conn.execute("SELECT holder FROM fleetkeeper_leader WHERE id = 1")
            row = await cur.fetchone()
            if row is None or row[0] != self.incarnation:  # fenced: someone else took over
                raise psycopg.OperationalError(f"the leader row names {row[0] if row else None}")
        else:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (fencing.LEADER_LOCK,))
            row = await cur.fetchone()
            if row is not None and row[0]:
                epoch = await self._take_over(conn)
                await self._set(True, epoch)
        now = self._clock()
        await conn.execute(
            "INSERT INTO fleetkeeper_replicas (name, incarnation, url, started_at, last_seen) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "incarnation = excluded.incarnation, url = excluded.url, "
            "started_at = excluded.started_at, last_seen = excluded.last_seen",
            (self.name, self.incarnation, self.url, self._started, now),
        )
        cur = await conn.execute(
            "SELECT r.name, r.url, r.incarnation = l.holder, r.last_seen "
            "FROM fleetkeeper_replicas r LEFT JOIN fleetkeeper_leader l ON l.id = 1 "
            "ORDER BY r.name"
        )
        self.replicas = tuple(
            Replica(str(n), str(u), bool(lead), float(seen))
            for n, u, lead, seen in await cur.fetchall()
        )

    async def _take_over(self, conn: AsyncConnection[TupleRow]) -> int:
        """Bump the epoch and name ourselves holder: from now on the database refuses
        the old leader's loop writes. Waits for its writes in flight (their share lock)."""
        async with conn.transaction():
            cur = await conn.execute(
                "UPDATE fleetkeeper_leader SET epoch = epoch + 1, holder = %s, since = %s "
                "WHERE id = 1 RETURNING epoch",
                (self.incarnation, self._clock()),
            )
            row = await cur.fetchone()
        if row is None:
            raise psycopg.OperationalError("the fleetkeeper_leader row is missing")
        return int(row[0])


async def _close(conn: AsyncConnection[TupleRow]) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
