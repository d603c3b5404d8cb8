"""The HTTP server's limits: uvicorn's own, plus the header-read timeout it lacks.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``), the size of a
request's headers (``h11_max_incomplete_event_size``) and the number of connections it
serves before answering 503 (``limit_concurrency``), but nothing bounds how long a client
may take to send its headers: its keep-alive timer only runs between requests, and the
first byte of a request cancels it. A slowloris client that connects and sends a header
byte every few seconds would hold a connection (and a file descriptor) forever, and
enough of them push every agent into 503s. ``HeaderTimeoutH11`` closes a connection whose
request headers are not complete ``header_timeout`` seconds after it connected (or after
the first byte of its next request), or whose body is not complete ``body_timeout``
seconds after its headers (the slow-POST variant). A request that has fully arrived is
not affected, so 30 s long-polls keep working.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from reconciler.config import Config

log = logging.getLogger(__name__)

FD_MARGIN = 256  # files the process needs besides its connections (database, git, logs)


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers and its body."""

    header_timeout: float = 10.0  # set per server by ``protocol_with``
    body_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for: object = None  # the h11 state the timer runs for

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Run the deadline of the request part still being received: headers (IDLE: a
        request may have begun), the body (SEND_BODY), or none (the request is in)."""
        state = self.conn.their_state
        if self.transport.is_closing() or state not in (h11.IDLE, h11.SEND_BODY):
            self._cancel()
            return
        if self._timer is not None and self._waiting_for is state:
            return
        self._cancel()
        seconds = self.header_timeout if state is h11.IDLE else self.body_timeout
        self._waiting_for = state
        self._timer = self.loop.call_later(seconds, self._expired, state, seconds)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._waiting_for = None

    def _expired(self, state: object, seconds: float) -> None:
        self._timer = None
        self._waiting_for = None
        if self.conn.their_state is state and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            part = "request headers" if state is h11.IDLE else "request body"
            # debug, not info: under a flood of such clients the log must not grow with it
            log.debug(
                "closing the connection of %s: no complete %s within %gs", peer, part, seconds
            )
            self.transport.close()


def protocol_with(header_timeout: float, body_timeout: float) -> type[HeaderTimeoutH11]:
    """A ``HeaderTimeoutH11`` class bound to the timeouts (uvicorn builds the instances)."""
    limits = {"header_timeout": header_timeout, "body_timeout": body_timeout}
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), limits)


def server_config(app: Any, config: Config, *, graceful_shutdown: int) -> uvicorn.Config:
    """uvicorn's settings for ``fleetkeeper serve``, limits from the reconciler config."""
    return uvicorn.Config(
        app,
        http=protocol_with(config.header_timeout, config.body_timeout),
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="none",
        timeout_graceful_shutdown=graceful_shutdown,
        timeout_keep_alive=config.keep_alive,
        limit_concurrency=config.max_connections,
        h11_max_incomplete_event_size=config.max_header_bytes,
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
