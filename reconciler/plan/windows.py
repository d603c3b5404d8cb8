"""Maintenance windows: is a node's window open at ``now``, and when does it open next. Pure.

A window is weekly: on each of its ``days`` it opens at ``start`` wall-clock time in its
IANA ``timezone`` and stays open for its duration in elapsed time (so a 4h window on the
night the clocks go back is still 4 real hours). A window may cross midnight: it belongs
to the day it opens on.

Around DST changes (``zoneinfo`` rules): a start time that does not exist that day (02:30
on spring-forward night in Europe/Berlin) opens at the same offset as before the gap,
i.e. 03:30 local; a start time that occurs twice (fall-back night) opens at its first
occurrence (``fold=0``). The only I/O is ``zoneinfo`` reading the time-zone database,
which it caches; an unknown zone (validation refuses it) never opens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from reconciler.spec import Window, Windows

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# how far around ``now`` to look for openings: a weekly window opens within 7 days, and
# one that opened up to 7 days ago may still be open (durations are at most a week)
_LOOK_DAYS = 8


@dataclass(frozen=True)
class Opening:
    """One occurrence of a window: [start, end) in unix seconds."""

    start: float
    end: float
    window: Window

    def label(self) -> str:
        """``Tue 02:00 Europe/Berlin``: the opening in the window's own time zone."""
        local = datetime.fromtimestamp(self.start, _zone(self.window.timezone) or UTC)
        return f"{DAYS[local.weekday()]} {local:%H:%M} {self.window.timezone}"


def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def known_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone this machine knows."""
    return _zone(name) is not None


def openings(window: Window, now: float) -> list[Opening]:
    """Occurrences of ``window`` that start within ``_LOOK_DAYS`` days either side of ``now``."""
    tz = _zone(window.timezone)
    if tz is None or window.minutes <= 0:
        return []
    hour, minute = (int(p) for p in window.start.split(":"))
    today = datetime.fromtimestamp(now, tz).date()
    out = []
    for k in range(-_LOOK_DAYS, _LOOK_DAYS + 1):
        day = today + timedelta(days=k)
        if DAYS[day.weekday()] not in window.days:
            continue
        start = datetime.combine(day, time(hour, minute), tzinfo=tz).timestamp()
        out.append(Opening(start, start + window.minutes * 60, window))
    return out


def open_now(windows: Windows, now: float) -> bool:
    """No windows (or ``ignore``): always open; else open while any window is."""
    if not isinstance(windows, tuple) or not windows:
        return True
    return any(o.start <= now < o.end for w in windows for o in openings(w, now))


def next_opening(windows: Sequence[Window], now: float) -> Opening | None:
    """The earliest opening after ``now`` (None: none within a week, e.g. an unknown zone)."""
    later = [o for w in windows for o in openings(w, now) if o.start > now]
    return min(later, key=lambda o: o.start) if later else None


def effective(release: Windows, node: tuple[Window, ...] | None) -> Windows:
    """The windows that gate ``node`` for a release: ``ignore`` wins (an emergency), then
    the node file's own windows, then the release's (or the fleet default's)."""
    if release == "ignore":
        return "ignore"
    return node if node is not None else release


def describe(windows: Windows) -> str:
    """``Tue,Thu 02:00 +4h Europe/Berlin``, ``ignore`` or ``any time``: windows for people."""
    if windows == "ignore":
        return "ignore (emergency)"
    if not windows:
        return "any time"
    return "; ".join(
        f"{','.join(w.days)} {w.start} +{_span(w.minutes * 60)} {w.timezone}" for w in windows
    )


def wait_text(label: str, opens_at: float, now: float) -> str:
    """``Waiting for window (opens Tue 02:00 Europe/Berlin, in 5h 12m)``."""
    return f"Waiting for window (opens {label}, in {_span(opens_at - now)})"


def _span(seconds: float) -> str:
    minutes = max(0, math.ceil(seconds / 60))  # rounded up: never "in 0m" before it opens
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"
