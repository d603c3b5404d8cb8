"""Logging set-up for the CLI: text or one JSON object per line; secrets never logged.

Library modules only call ``logging.getLogger(__name__)``; handlers are installed here.
Pass context with ``extra={"revision": ..., "release": ..., "node": ...}``.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from reconciler.errors import sanitize
from reconciler.store.base import AuditEvent

CONTEXT_KEYS = ("revision", "release", "node", "event", "generation")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": sanitize(record.getMessage()),
        }
        for key in CONTEXT_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = sanitize(self.formatException(record.exc_info))
        return json.dumps(out, sort_keys=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        ctx = " ".join(
            f"{k}={record.__dict__[k]}" for k in CONTEXT_KEYS if record.__dict__.get(k) is not None
        )
        return sanitize(f"{base} {ctx}" if ctx else base)


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


_AUDIT_LOG = logging.getLogger("reconciler.audit")
_WARNING_KINDS = frozenset(
    {"refused", "invalid", "halted", "rolled-back", "stale", "rollback", "registration-refused"}
)


def log_event(event: AuditEvent) -> None:
    """One log line per audit event, with its revision, release and node as fields."""
    level = logging.WARNING if event.kind in _WARNING_KINDS else logging.INFO
    _AUDIT_LOG.log(
        level,
        "%s",
        event.message,
        extra={
            "event": event.kind,
            "revision": event.revision,
            "release": event.release,
            "node": event.node,
        },
    )
