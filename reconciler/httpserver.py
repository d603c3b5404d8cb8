"""The HTTP server's limits: uvicorn's own, plus the header-read timeout it lacks.

uvicorn bounds an idle kept-alive connection (``timeout_keep_alive``), the size of a
request's headers (``h11_max_incomplete_event_size``) and the number of connections it
serves before answering 503 (``limit_concurrency``), but nothing bounds how long a client
may take to send its headers: its keep-alive timer only runs between requests, and the
first byte of a request cancels it. A slowloris client that connects and sends a header
byte every few seconds would hold a connection (and a file descriptor) forever, and
enough of them push every agent into 503s. ``HeaderTimeoutH11`` closes a connection whose
request headers are not complete ``header_timeout`` seconds after it connected (or after
the first byte of its next request); a request whose headers arrived is not affected, so
30 s long-polls keep working.
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
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    header_timeout: float = 10.0  # set per server by ``protocol_with``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()  # a request has begun, its headers are not complete yet
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info(
                "closing the connection of %s: no complete request headers within %gs",
                peer,
                self.header_timeout,
            )
            self.transport.close()


def protocol_with(header_timeout: float) -> type[HeaderTimeoutH11]:
    """A ``HeaderTimeoutH11`` class bound to ``header_timeout`` (uvicorn builds instances)."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout": header_timeout})


def server_config(app: Any, config: Config, *, graceful_shutdown: int) -> uvicorn.Config:
    """uvicorn's settings for ``fleetkeeper serve``, limits from the reconciler config."""
    return uvicorn.Config(
        app,
        http=protocol_with(config.header_timeout),
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
