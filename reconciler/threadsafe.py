"""Calling into an asyncio event loop from any thread."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., object], *args: object) -> None:
    """Run ``fn(*args)`` on ``loop``: now when called from that loop's thread, else scheduled
    thread-safely. A loop that closed meanwhile is ignored (nobody is left to wake)."""
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        fn(*args)
    else:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)
