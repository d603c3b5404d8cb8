"""Each table's ``Shape``: a record written as a row reads back as the same record, the
JSON columns as canonical text, and a codec for a column the shape lacks is refused."""

from __future__ import annotations

from typing import Any

import pytest

import reconciler.store.records as records
from reconciler.plan.controls import Control
from reconciler.store.base import (
    AppliedRevision,
    AuditEvent,
    DesiredRecord,
    JoinToken,
    NodeRecord,
    ReportRecord,
)

APPROVAL = {"kind": "merge", "ref": "a" * 40, "signers": ["alice"]}

# (shape, record, the row it is stored as; a shape with a key reads it first)
CASES: list[tuple[records.Shape[Any], Any, tuple[object, ...]]] = [
    (
        records.NODES,
        NodeRecord("gpu-1", {"platform": "linux/amd64"}, "h", 1.5, {"via": "bootstrap"}),
        ("gpu-1", '{"platform":"linux/amd64"}', "h", 1.5, '{"via":"bootstrap"}'),
    ),
    (
        records.JOIN_TOKENS,
        JoinToken("t1", "h", 1.0, 2.0, 3, 1, None, ("inference",), {"site": "lab"}, None),
        ("t1", "h", 1.0, 2.0, 3, 1, None, '["inference"]', '{"site":"lab"}', None),
    ),
    (
        records.JOIN_TOKENS,  # no scope: NULL columns, not "null" text
        JoinToken("t2", "h", 1.0, 2.0, 1),
        ("t2", "h", 1.0, 2.0, 1, 0, None, None, None, None),
    ),
    (
        records.DESIRED,
        DesiredRecord("n1", 2, '"2-ab"', {"node": "n1", "workloads": []}),
        ("n1", 2, '"2-ab"', '{"node":"n1","workloads":[]}'),
    ),
    (
        records.REPORTS,
        ReportRecord("n1", {"workloads": []}, 9.0),
        ("n1", '{"workloads":[]}', 9.0),
    ),
    (
        records.APPLIED,
        AppliedRevision("a" * 40, APPROVAL, 3.0),
        ("a" * 40, '{"kind":"merge","ref":"' + "a" * 40 + '","signers":["alice"]}', 3.0),
    ),
]


@pytest.mark.parametrize(("shape", "record", "row"), CASES)
def test_a_record_round_trips_through_its_row(
    shape: records.Shape[Any], record: Any, row: tuple[object, ...]
) -> None:
    assert shape.row(record) == row
    assert shape.record(row) == record
    assert len(shape.columns.split(", ")) == len(row)


@pytest.mark.parametrize(
    ("shape", "record"),
    [
        (records.AUDIT, AuditEvent(1.0, "applied", "m", "a" * 40, None, None, {"x": 1}, id=7)),
        (records.CONTROLS, Control(4, "hello", "pause", "fp", "alice", "freeze", 2.0)),
    ],
)
def test_a_key_the_database_assigns_is_not_written_and_is_read_first(
    shape: records.Shape[Any], record: Any
) -> None:
    row = shape.row(record)
    assert len(row) == len(shape.columns.split(", "))  # the columns' values, no key
    key = 7 if isinstance(record, AuditEvent) else 4
    assert shape.record((key, *row)) == record


def test_a_codec_for_a_column_the_shape_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\['document'\]"):
        records.Shape(NodeRecord, ("name", "facts"), document=records.JSON_TEXT)
