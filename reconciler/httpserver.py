"""The HTTP server's limits: uvicorn's own, plus the deadlines and header cap it lacks.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``) and the number of
connections it serves before answering 503 (``limit_concurrency``), but nothing bounds
how long a client may take to send its headers: its keep-alive timer only runs between
requests, and the first byte of a request cancels it. A slowloris client that connects
and sends a header byte every few seconds would hold a connection (and a file
descriptor) forever, and enough of them push every agent into 503s.
``DeadlineHttpTools`` closes a connection whose request headers are not complete
``header_timeout`` seconds after it connected (or after the first byte of its next
request), or whose body is not complete ``body_timeout`` seconds after its headers (the
slow-POST variant). A request that has fully arrived is not affected, so 30 s
long-polls keep working.

It is uvicorn's httptools protocol (the C parser, llhttp), not its pure-Python h11 one:
at 8,000 agents h11's parsing and response framing were most of the request time and
pushed heartbeat p99 past half a second. httptools has no cap on the size of a request's
headers (h11 had ``h11_max_incomplete_event_size``), so the protocol counts them itself:
a request line plus headers over ``max_header_bytes`` answers 400 and closes.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reconciler.config import Config

log = logging.getLogger(__name__)

FD_MARGIN = 256  # files the process needs besides its connections (database, git, logs)

Phase = Literal["head", "body", "in"]  # receiving headers, receiving the body, all in
_LOCAL_ADDRESSES: dict[tuple[str, int | None] | None, tuple[str, int | None] | None] = {}


class HeadersTooLarge(Exception):
    """Raised from the parser's callback: httptools turns it into a parser error, which
    uvicorn answers with 400 and a closed connection."""


class _Deadline:
    """One connection's deadline state: one attribute on the protocol, not five.

    uvicorn's protocol sets 28 attributes; past 30, CPython stops sharing the class's
    dict keys and gives each instance a whole dict of its own (1.3 KB more a connection,
    21 MiB at 16,000 connections)."""

    __slots__ = ("phase", "head_bytes", "head_raw", "timer", "timed")

    def __init__(self) -> None:
        self.phase: Phase = "head"  # a new connection owes its first request's headers
        self.head_bytes = 0  # request line and headers of this request, as parsed
        self.head_raw = 0  # bytes received while this request's headers were incomplete
        self.timer: asyncio.TimerHandle | None = None
        self.timed: Phase | None = None  # the phase the timer runs for


class _Pipeline(list[Any]):
    """uvicorn's queue of pipelined requests (it calls ``appendleft``, ``pop`` and tests
    truth) on a list: an empty deque holds a 624-byte block, an empty list 56 bytes, and
    every connection has one while clients hardly ever pipeline."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class LightEvent:
    """``asyncio.Event``'s ``set``/``clear``/``is_set``/``wait``, its waiter list made on
    demand. uvicorn gives each request in flight an Event ("more of the body arrived",
    "the client left") and each connection another (writable again): an Event and its
    deque are 0.7 KB, 8,000 long-polls are in flight all the time and 16,000 connections
    open, while hardly any request waits for a body (a GET has none) and hardly any
    transport pauses."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if not self._value:
            self._value = True
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)


class LightFlowControl(FlowControl):
    """uvicorn's write flow control (its own pause, resume and drain) on a
    ``LightEvent``: every connection has one, and uvicorn's ``asyncio.Event`` with its
    deque was 0.7 KB of it, for a transport that hardly ever pauses (a client not
    reading its responses)."""

    def __init__(self, transport: asyncio.Transport) -> None:  # not super's: its Event
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._is_writable_event = LightEvent()  # type: ignore[assignment]
        self._is_writable_event.set()


class DeadlineHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers and its
    body, and a cap on the size of its headers."""

    header_timeout: float = 10.0  # set per server by ``protocol_with``
    body_timeout: float = 30.0
    max_header_bytes: int = 16384

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = _Deadline()
        self.pipeline = _Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = LightFlowControl(transport)
        # every connection of a listening socket has the same local address: one tuple
        self.server = _LOCAL_ADDRESSES.setdefault(self.server, self.server)
        self._watch()

    def data_received(self, data: bytes) -> None:
        d = self._deadline
        head = d.phase == "head"
        super().data_received(data)
        if head and d.phase == "head" and not self.transport.is_closing():
            # all of it was request line and headers still incomplete: the parser holds
            # partial lines, so bound them here too (not only per complete header)
            d.head_raw += len(data)
            if d.head_raw > self.max_header_bytes:
                self._too_large()
                return
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    # parser callbacks (httptools calls them from feed_data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        d = self._deadline
        d.phase, d.head_bytes, d.head_raw = "head", 0, 0

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._deadline.phase = "body"
        before = self.cycle
        super().on_headers_complete()
        if self.cycle is not before and self.cycle is not None:
            # the new request's task is created, not started (no eager task factory
            # here): nothing waits on the event it was given yet
            self.cycle.message_event = LightEvent()  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        self._deadline.phase = "in"
        super().on_message_complete()

    def on_response_complete(self) -> None:
        done = self.cycle
        super().on_response_complete()
        if self.cycle is done:
            # nothing newer arrived: drop the answered request (its scope, headers, body
            # and event) rather than keep it until the next one; 8,000 agents' report
            # connections sit idle between heartbeats, each holding one
            self.cycle = None  # type: ignore[assignment]
            self.scope = None  # type: ignore[assignment]
            self.headers = None  # type: ignore[assignment]

    def _count(self, n: int) -> None:
        d = self._deadline
        d.head_bytes += n
        if d.head_bytes > self.max_header_bytes:
            raise HeadersTooLarge(f"request headers over {self.max_header_bytes} bytes")

    def _too_large(self) -> None:
        self._cancel()
        self.send_400_response(f"Request headers over {self.max_header_bytes} bytes.")

    # the deadlines

    def _watch(self) -> None:
        """Run the deadline of the request part still being received: headers (a request
        may have begun), the body, or none (the request is in)."""
        d = self._deadline
        phase = d.phase
        if self.transport.is_closing() or phase == "in":
            self._cancel()
            return
        if d.timer is not None and d.timed == phase:
            return
        self._cancel()
        seconds = self.header_timeout if phase == "head" else self.body_timeout
        d.timed = phase
        d.timer = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _cancel(self) -> None:
        d = self._deadline
        if d.timer is not None:
            d.timer.cancel()
            d.timer = None
            d.timed = None

    def _expired(self, phase: Phase, seconds: float) -> None:
        d = self._deadline
        d.timer = None
        d.timed = None
        if d.phase == phase and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            part = "request headers" if phase == "head" else "request body"
            # debug, not info: under a flood of such clients the log must not grow with it
            log.debug(
                "closing the connection of %s: no complete %s within %gs", peer, part, seconds
            )
            self.transport.close()


def protocol_with(
    header_timeout: float, body_timeout: float, max_header_bytes: int
) -> type[DeadlineHttpTools]:
    """A ``DeadlineHttpTools`` class bound to the limits (uvicorn builds the instances)."""
    limits = {
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
        "max_header_bytes": max_header_bytes,
    }
    return type("DeadlineHttpTools", (DeadlineHttpTools,), limits)


def server_config(app: Any, config: Config, *, graceful_shutdown: int) -> uvicorn.Config:
    """uvicorn's settings for ``fleetkeeper serve``, limits from the reconciler config."""
    return uvicorn.Config(
        app,
        http=protocol_with(config.header_timeout, config.body_timeout, config.max_header_bytes),
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="none",
        timeout_graceful_shutdown=graceful_shutdown,
        timeout_keep_alive=config.keep_alive,
        limit_concurrency=config.max_connections,
        server_header=False,
    )


def raise_open_file_limit(connections: int) -> None:
    """Let the process hold ``connections`` sockets: raise the soft RLIMIT_NOFILE up to the
    hard one, and warn when even that is too low (systemd: ``LimitNOFILE``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", new, exc)
            new = soft
        if new < want:
            log.warning(
                "open-file limit %d is below maxConnections %d + %d: raise it (systemd "
                "LimitNOFILE=%d) or lower maxConnections",
                new,
                connections,
                FD_MARGIN,
                want,
            )
