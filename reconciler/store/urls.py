"""Database URLs as they may be shown: in messages, logs and command output."""

from __future__ import annotations

import re

from reconciler.errors import sanitize

_PASSWORD_PARAM = re.compile(r"(?i)\bpassword=[^&\s]*")


def redact_url(url: str) -> str:
    """``url`` fit for a log or a message: no user:password@, no password= parameter."""
    return _PASSWORD_PARAM.sub("password=***", sanitize(url))
