"""``fleetkeeper_common.canonical``: the orjson fast path gives json's bytes, or steps aside.

The reconciler signs what ``canonical_bytes`` returns and the agent verifies against its own
encoding (with or without orjson installed), so one differing byte would make every node
refuse the document: the property is checked over arbitrary JSON values, non-ASCII and
control characters, floats (NaN and infinities too) and integers past 64 bits included.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper_common import canonical
from fleetkeeper_common.canonical import canonical_json, fast_bytes
from fleetkeeper_common.signing import canonical_bytes

TEXT = st.text(st.characters(codec="utf-8"), max_size=12) | st.text(
    st.sampled_from('az09"\\/\x00\x1f\x7f\x80é☕\u2028\U0001f600 {}[]:,.e'), max_size=8
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, -0.0, 1e16, 1e-5, 1e20, 1.5, 123456789012345680.0, 5e-324])
    | TEXT
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)

# values the fast path takes (no null, no float), so its own bytes are compared often
FAST = st.recursive(
    st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | TEXT,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=30,
)


def reference(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@settings(max_examples=3000, deadline=None)
@given(JSON | FAST)
def test_fast_path_is_json_byte_for_byte(value: Any) -> None:
    fast = fast_bytes(value)
    if fast is not None:
        assert fast == reference(value)
    assert canonical_json(value).encode() == reference(value)


@settings(max_examples=1000, deadline=None)
@given(JSON)
def test_signed_bytes_are_json_and_refuse_nan(value: Any) -> None:
    try:
        expected = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        with pytest.raises(ValueError):
            canonical_bytes(value)
        return
    assert canonical_bytes(value) == expected.encode()


DOCUMENT = {
    "apiVersion": "fleetkeeper/v1",
    "node": "gpu-1",
    "generation": 3,
    "workloads": [{"name": "llm", "version": "1.2.0", "run": {"command": ["bin/x", "--p", "1"]}}],
}


@pytest.mark.parametrize(
    ("value", "fast"),
    [
        (DOCUMENT, True),  # what a fan-out encodes: orjson's bytes
        ({**DOCUMENT, "node": "gpu-é"}, False),  # non-ASCII: json escapes it
        ({**DOCUMENT, "x": "\x7f"}, False),  # DEL: json escapes it, orjson does not
        ({**DOCUMENT, "x": 1e16}, False),  # "1e+16" in json, "1e16" in orjson
        ({**DOCUMENT, "x": 1e20}, False),  # json "1e+20", orjson "100000000000000000000.0"
        ({**DOCUMENT, "x": math.nan}, False),  # json NaN, orjson null
        ({**DOCUMENT, "x": None}, False),
        ({**DOCUMENT, "x": 2**64}, False),  # past orjson's integers
        ({1: "a"}, False),  # json turns the key into "1"; orjson refuses it
        ({**DOCUMENT, "x": True}, True),
    ],
)
def test_when_orjson_steps_aside(value: Any, fast: bool) -> None:
    assert (fast_bytes(value) is not None) is fast
    assert canonical_json(value).encode() == reference(value)


def test_subclasses_are_left_to_json() -> None:
    class Tag(str):
        pass

    class Count(int):
        def __repr__(self) -> str:
            return "Count()"

    value = {"a": Tag("x"), "b": Count(3)}
    assert fast_bytes(value) is None
    assert canonical_json(value) == reference(value).decode()


def test_without_orjson_the_same_text(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fast_bytes(DOCUMENT) == orjson.dumps(DOCUMENT, option=orjson.OPT_SORT_KEYS)
    monkeypatch.setattr(canonical, "HAVE_ORJSON", False)  # the agent's install: no orjson
    assert fast_bytes(DOCUMENT) is None
    assert canonical_bytes(DOCUMENT) == reference(DOCUMENT)
