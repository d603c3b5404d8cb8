"""Canonical JSON: one text per value (sorted keys, no spaces), for digests, ETags and
change detection. Two equal values always give the same text, on every machine."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def canonical_json(value: object, *, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as canonical JSON text; ``default`` converts what JSON cannot hold."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)
