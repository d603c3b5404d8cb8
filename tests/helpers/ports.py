"""TCP ports on 127.0.0.1 for servers a test starts later (agents, model servers, PostgreSQL).

``free_port()`` hands out a port that is free now and that nothing else is likely to take
before the test's own server binds it. The classic trick (bind port 0, read the number,
close) returns an *ephemeral* port: the kernel hands the same range out as the source port
of every outgoing connection, so under load a health check or an HTTP client of the test
itself takes it in the gap, and the server dies with "address already in use". So:

* ports come from below (or, if that is too small, above) the kernel's ephemeral range
  (``/proc/sys/net/ipv4/ip_local_port_range``), which connect() and bind(0) never pick;
* each pytest-xdist worker draws from its own slice of that range, so two workers never
  hand out the same port;
* a process walks its slice from a random start and never repeats a port until the slice
  wraps, so two sessions on one machine rarely meet, and a port picked earlier in this
  test but not bound yet is not handed out twice;
* a port is handed out only if a bind without ``SO_REUSEADDR`` succeeds (nothing listens
  on it and no connection lingers in TIME_WAIT).
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

LOWEST = 10_000  # below: well-known services (PostgreSQL 5432, nginx 8080...) and guessable
HIGHEST = 65_535
MIN_SLICE = 64


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default; macOS uses 49152-65535


def _pool() -> range:
    """The ports outside the ephemeral range, the larger side."""
    lo, hi = _ephemeral_range()
    below = range(LOWEST, max(LOWEST, lo))
    above = range(min(hi + 1, HIGHEST + 1), HIGHEST + 1)
    return below if len(below) >= len(above) else above


def _worker() -> tuple[int, int]:
    """(this xdist worker's index, how many workers): (0, 1) outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if name.startswith("gw") and name[2:].isdigit() and count.isdigit() and int(count) > 0:
        return int(name[2:]) % int(count), int(count)
    return 0, 1


class _Picker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slice: range | None = None
        self._next = 0

    def _my_slice(self) -> range:
        if self._slice is None:
            pool = _pool()
            index, count = _worker()
            size = max(len(pool) // count, MIN_SLICE)
            start = pool.start + (index * size) % max(len(pool), 1)
            self._slice = range(start, min(start + size, pool.stop))
            # not the global random: a test that seeds it would give every process one start
            self._next = random.SystemRandom().randrange(len(self._slice))
        return self._slice

    def pick(self) -> int:
        with self._lock:
            ports = self._my_slice()
            for _ in range(len(ports)):
                port = ports[self._next % len(ports)]
                self._next += 1
                if _bindable(port):
                    return port
        raise RuntimeError(f"no free TCP port on 127.0.0.1 in {ports.start}-{ports.stop - 1}")


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_picker = _Picker()


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now, outside the ephemeral range, unique to this
    worker (see the module's docstring)."""
    return _picker.pick()
