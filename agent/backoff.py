"""Exponential backoff with jitter (pure: the random draw is an argument)."""

from __future__ import annotations


def backoff_delay(attempt: int, *, base: float, cap: float, draw: float) -> float:
    """Delay before retry ``attempt`` (0, 1, ...): half of min(cap, base*2^attempt) plus a
    random share of the other half (``draw`` in [0, 1)), so agents spread out but still wait."""
    ceiling = min(cap, base * float(2 ** min(attempt, 32)))
    return ceiling / 2 + draw * ceiling / 2
