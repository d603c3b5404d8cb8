"""Shared test helpers."""

from __future__ import annotations

import signal


def interruptible() -> None:
    """``preexec_fn`` for a child the test will Ctrl-C: a suite started in the background
    by a non-interactive shell inherits SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler in the child."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
