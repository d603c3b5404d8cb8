"""How a rollout's nodes are split into batches. Pure.

Canary nodes go first, each alone in its own batch; the other targeted nodes follow in
batches of ``batchSize``: a count, or a percentage of all targeted nodes rounded up,
never less than one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from reconciler.spec import Rollout


def batch_size(size: int | str, targeted: int) -> int:
    """Nodes per batch for ``targeted`` nodes: ``3`` -> 3, ``"25%"`` of 5 -> 2."""
    if isinstance(size, str):
        pct = float(size.rstrip("%"))
        return max(1, math.ceil(pct * targeted / 100))
    return max(1, size)


def make_batches(
    targeted: Sequence[str], rollout: Rollout, *, total: int | None = None
) -> list[tuple[str, ...]]:
    """Batches in order: each canary alone, then the rest ``batchSize`` at a time.

    ``total`` is the number of targeted nodes a percentage refers to (default: all of
    ``targeted``; nodes that join later are batched against the whole rollout's size).
    """
    members = set(targeted)
    canary = [n for n in rollout.canary if n in members]
    first = set(canary)
    rest = [n for n in targeted if n not in first]
    size = batch_size(rollout.batch_size, len(targeted) if total is None else total)
    out: list[tuple[str, ...]] = [(c,) for c in canary]
    out += [tuple(rest[i : i + size]) for i in range(0, len(rest), size)]
    return out
