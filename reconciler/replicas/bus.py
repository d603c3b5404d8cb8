"""Wake-ups between replicas: PostgreSQL ``LISTEN``/``NOTIFY`` on channel ``fleetkeeper``.

A message says what changed, never the data: ``{"kind", "nodes", "from"}`` with kind
``desired`` (documents of these nodes changed: wake their long-polls), ``nodes`` (a node
registered, re-registered or was reset: reload the tokens), ``reports`` (stored reports
or lastSeen moved: the leader re-reads them), ``fetch`` (a webhook reached a follower:
the leader fetches), ``revision`` (the leader applied a new revision: followers load its
spec, which registration and status need), ``controls`` (an operator's rollout control
was stored: the leader plans with it now, not at its next resync). Receivers read the
store, which is the truth; a lost message costs only latency, since each (re)connection
starts with a full refresh and the leader's resync re-reads everything anyway.

``send`` is called from any thread right after the write committed, on a connection of
its own (autocommit: the notification leaves at once); ``listen`` runs on the event loop
on another. A payload is kept under PostgreSQL's 8000-byte limit by splitting the node
list over several notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg
from psycopg import AsyncConnection, Connection
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

from reconciler.store import redact_url
from reconciler.store.postgres import connection_params

log = logging.getLogger(__name__)

CHANNEL = "fleetkeeper"
MAX_PAYLOAD = 7000  # bytes; PostgreSQL refuses 8000 and more
CONNECT_TIMEOUT = 3
RETRY_SECONDS = 1.0

Kind = Literal["desired", "nodes", "reports", "fetch", "revision", "controls"]
KINDS: tuple[Kind, ...] = ("desired", "nodes", "reports", "fetch", "revision", "controls")


@dataclass(frozen=True)
class Message:
    kind: Kind
    nodes: tuple[str, ...]
    sender: str  # the incarnation that sent it


def encode(kind: Kind, nodes: Sequence[str], sender: str) -> list[str]:
    """The payloads for one change (several when the node list is long)."""
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for node in nodes:
        if chunk and size + len(node) + 4 > MAX_PAYLOAD:
            out.append(json.dumps({"kind": kind, "nodes": chunk, "from": sender}))
            chunk, size = [], 0
        chunk.append(node)
        size += len(node) + 4
    if chunk or not out:
        out.append(json.dumps({"kind": kind, "nodes": chunk, "from": sender}))
    return out


def decode(payload: str) -> Message | None:
    """A message, or None for a payload this version does not understand."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    kind = next((k for k in KINDS if k == doc.get("kind")), None)
    nodes = doc.get("nodes")
    if kind is None or not isinstance(nodes, list):
        return None
    return Message(kind, tuple(str(n) for n in nodes), str(doc.get("from", "")))


class Bus:
    def __init__(self, url: str, incarnation: str) -> None:
        self._conninfo = make_conninfo(
            **{**connection_params(url), "connect_timeout": str(CONNECT_TIMEOUT)}
        )
        self.incarnation = incarnation
        self._lock = threading.Lock()
        self._sender: Connection[TupleRow] | None = None
        self.sent = 0
        self.received = 0

    def send(self, kind: Kind, nodes: Sequence[str] = ()) -> None:
        """Tell the other replicas (any thread). Never raises: a wake-up is an accelerator."""
        payloads = encode(kind, nodes, self.incarnation)
        with self._lock:
            try:
                if self._sender is None or self._sender.closed:
                    self._sender = psycopg.Connection.connect(self._conninfo, autocommit=True)
                for payload in payloads:
                    self._sender.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                self.sent += len(payloads)
            except psycopg.Error as exc:
                log.warning("cannot notify the other replicas (%s): %s", kind, redact_url(str(exc)))
                if self._sender is not None:
                    with contextlib.suppress(Exception):
                        self._sender.close()
                self._sender = None

    def close(self) -> None:
        with self._lock:
            if self._sender is not None:
                with contextlib.suppress(Exception):
                    self._sender.close()
                self._sender = None

    async def listen(
        self,
        stop: asyncio.Event,
        on_message: Callable[[Message], None],
        on_connect: Callable[[], Awaitable[None]],
    ) -> None:
        """Deliver every other replica's message to ``on_message`` until ``stop``;
        ``on_connect`` runs after each (re)connection (a full refresh: messages sent
        while disconnected are lost)."""
        while not stop.is_set():
            conn: AsyncConnection[TupleRow] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                await conn.execute(f"LISTEN {CHANNEL}")
                await on_connect()
                while not stop.is_set():
                    async for note in conn.notifies(timeout=RETRY_SECONDS):
                        message = decode(note.payload)
                        if message is None:
                            log.warning("ignoring a notification: %.200s", note.payload)
                        elif message.sender != self.incarnation:
                            self.received += 1
                            on_message(message)
                    await conn.execute("SELECT 1")  # a dead connection raises here
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("replica wake-ups: %s; reconnecting", redact_url(str(exc).strip()))
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(CONNECT_TIMEOUT):
                            await conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
