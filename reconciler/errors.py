"""Errors of the reconciler, classified by what should happen next.

FleetkeeperError            base; every error carries a ``reason``
├── Stalled                 a human must act (invalid file, untrusted commit, bad config)
│   ├── ConfigError         the reconciler's own config is wrong
│   ├── InvalidRevision     a revision fails validation
│   └── Unapproved          a revision is not approved (or history moved backwards)
├── Waiting                 retry later (nothing new yet, remote unreachable)
└── Transient               retry now (a lock, a race)

CommandError        a subprocess (git, ssh-keygen, gpg) failed: command, exit code, stderr
"""

from __future__ import annotations

import re
from collections.abc import Sequence


class FleetkeeperError(Exception):
    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class Stalled(FleetkeeperError):
    reason = "Stalled"


class ConfigError(Stalled):
    reason = "ConfigError"


class InvalidRevision(Stalled):
    reason = "Invalid"


class Unapproved(Stalled):
    reason = "Unapproved"


class Waiting(FleetkeeperError):
    reason = "Waiting"


class Transient(FleetkeeperError):
    reason = "Transient"


_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def sanitize(text: str) -> str:
    """Strip user:password@ from any URL in ``text`` (Flux's SanitizeError)."""
    return _CREDENTIALS.sub(r"\g<scheme>***@", text)


class CommandError(FleetkeeperError):
    reason = "CommandFailed"

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = sanitize(stderr.strip())
        shown = sanitize(" ".join(self.argv))
        super().__init__(f"command failed (exit {returncode}): {shown}\n{self.stderr}")
