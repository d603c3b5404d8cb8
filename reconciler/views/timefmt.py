"""Times for people: "12s ago", "4m 10s", and ``--since`` values ("10m", "2h", "1d", ISO).

Pure: the current time is always an argument.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)


def to_unix(value: object) -> float | None:
    """A unix time from a number or an RFC 3339 / ISO 8601 string; None when absent/unknown."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    return None


def duration(seconds: float) -> str:
    """A short duration: 45s, 4m 10s, 2h 5m, 3d 4h."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        m, r = divmod(s, 60)
        return f"{m}m {r}s" if r else f"{m}m"
    if s < 86400:
        h, r = divmod(s, 3600)
        return f"{h}h {r // 60}m" if r // 60 else f"{h}h"
    d, r = divmod(s, 86400)
    return f"{d}d {r // 3600}h" if r // 3600 else f"{d}d"


def ago(then: float | None, now: float) -> str:
    """ "12s ago", or "never" when there is no time."""
    if then is None:
        return "never"
    delta = now - then
    if delta < 0.5:
        return "just now"
    return f"{duration(delta)} ago"


def iso(ts: float) -> str:
    """RFC 3339 UTC with seconds, e.g. 2026-11-25T07:42:17Z."""
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str, what: str = "--ttl") -> float:
    """Seconds in "90s", "30m", "1h", "7d", "2w"; ValueError naming ``what`` otherwise."""
    m = _RELATIVE.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{what} {text!r}: expected a duration like 30m, 1h, 7d or 2w")
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def parse_since(text: str, now: float) -> float:
    """``--since`` as a unix time: "10m", "2h", "1d", "1w" before now, a unix time, or ISO.

    Raises ValueError with the accepted forms when ``text`` is none of them.
    """
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    stripped = text.strip()
    try:
        return float(stripped)
    except ValueError:
        pass
    ts = to_unix(stripped)
    if ts is None:
        raise ValueError(
            f"--since {text!r}: expected a duration like 10m, 2h, 1d, a unix time, "
            "or an ISO date like 2026-11-25 or 2026-11-25T07:00:00Z"
        )
    return ts
