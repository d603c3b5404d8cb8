"""Canonical JSON: one text per value (sorted keys, no spaces, ``\\uXXXX`` for every
character outside printable ASCII), for digests, ETags, change detection and the bytes the
reconciler signs. Two equal values always give the same text, on every machine.

The text is what ``json.dumps(value, sort_keys=True, separators=(",", ":"))`` writes. When
orjson is installed (the ``server`` extra: the reconciler encodes and signs a fleet's
documents on every fan-out) it encodes first, and its bytes are kept only where they are
provably the same: printable ASCII only (orjson writes UTF-8 and a raw DEL), no number
with a fraction or exponent (its float text differs: ``1e16`` for ``1e+16``), no ``null``
(orjson writes NaN and infinities as ``null``), and every value a plain ``dict``, ``list``,
``str``, ``int``, ``bool`` or ``None`` (subclasses pass through to ``json``). Anything else
is encoded by ``json`` as before. ``tests/unit/test_canonical.py`` checks both agree on
arbitrary JSON values (non-ASCII, control characters, floats, big integers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

try:
    import orjson

    HAVE_ORJSON = True
except ImportError:  # the agent and the validator need no orjson
    HAVE_ORJSON = False

# A number token with a fraction or an exponent: after ":", "," or "[" (orjson writes no
# spaces), or the whole text. One pattern per literal start: a pattern that starts with a
# class is tried at every offset, 3x slower on a 1.6 KB document.
_FLOATS = tuple(
    re.compile(p) for p in (rb":-?[0-9]+[.eE]", rb",-?[0-9]+[.eE]", rb"\[-?[0-9]+[.eE]")
)
_TOP_FLOAT = re.compile(rb"-?[0-9]+[.eE]")


def _passthrough(obj: object) -> object:
    raise TypeError  # a subclass or a type orjson would encode its own way: json decides


def fast_bytes(value: object) -> bytes | None:
    """orjson's canonical bytes of ``value`` when they equal ``json``'s, else None."""
    if not HAVE_ORJSON:
        return None
    try:
        out = orjson.dumps(
            value,
            default=_passthrough,
            option=orjson.OPT_SORT_KEYS
            | orjson.OPT_PASSTHROUGH_SUBCLASS
            | orjson.OPT_PASSTHROUGH_DATACLASS
            | orjson.OPT_PASSTHROUGH_DATETIME,
        )
    except (TypeError, orjson.JSONEncodeError):
        return None
    # orjson escapes control characters itself, as json does
    if not out.isascii() or b"\x7f" in out or b"null" in out:
        return None
    if _TOP_FLOAT.match(out) or any(p.search(out) for p in _FLOATS):
        return None
    return out


def canonical_json(value: object, *, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as canonical JSON text; ``default`` converts what JSON cannot hold."""
    if default is None:
        out = fast_bytes(value)
        if out is not None:
            return out.decode("ascii")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=default)
