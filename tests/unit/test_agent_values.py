"""The agent's parsed values: a desired workload, the desired document, the failed-target
ledger and the update journal (their JSON shapes on disk must not change)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import WorkloadError
from agent.journal import Journal
from agent.ledger import FailedTarget, Ledger
from agent.state import StateDir
from agent.workload import Desired, Workload, doc_key

ENTRY: dict[str, Any] = {
    "name": "hello",
    "kind": "process",
    "version": "1.2.0",
    "artifact": {"platform": "linux/amd64", "url": "http://x/h.tar.gz", "sha256": "ab" * 32},
    "run": {"command": ["bin/hello", "--port", "8080"]},
    "health": {"http": "http://127.0.0.1:8080/healthz", "timeoutSeconds": 7},
}


def test_workload_parse_reads_every_field_once() -> None:
    w = Workload.parse(ENTRY)
    assert (w.name, w.kind, w.version) == ("hello", "process", "1.2.0")
    assert (w.artifact.url, w.artifact.sha256, w.artifact.size) == (
        "http://x/h.tar.gz",
        "ab" * 32,
        None,
    )
    assert (w.health_timeout, w.has_health_check, w.program) == (7.0, True, "bin/hello")
    assert w.doc is ENTRY


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"name": None}, "has no name"),
        ({"artifact": None}, "'hello': artifact.url and artifact.sha256 are required"),
        ({"artifact": {"url": "http://x"}}, "artifact.url and artifact.sha256"),
        ({"version": None}, "'hello': version is required"),
    ],
)
def test_workload_parse_names_what_is_missing(change: dict[str, Any], says: str) -> None:
    entry = {k: v for k, v in {**ENTRY, **change}.items() if v is not None}
    with pytest.raises(WorkloadError, match=says):
        Workload.parse(entry)


def test_desired_document() -> None:
    d = Desired.parse({"generation": 4, "workloads": [ENTRY]})
    assert d.names() == {"hello"} and d.entry("hello") is ENTRY and d.entry("other") is None
    assert d.key(ENTRY) == doc_key(ENTRY)
    assert Desired.parse(None) == Desired(0, ())


def test_ledger_keeps_the_failed_json_shape(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    ledger = Ledger(state)
    target = FailedTarget("1.2.0", "ab" * 32, "k1", "Failed", "it broke")
    ledger.remember("hello", target)
    assert json.loads(state.failed_file.read_text())["hello"] == {
        "version": "1.2.0",
        "sha256": "ab" * 32,
        "docKey": "k1",
        "phase": "Failed",
        "message": "it broke",
    }
    got = ledger.get("hello")
    assert got == target and got.is_target("1.2.0", "ab" * 32, "k1")
    assert not got.is_target("1.2.0", "ab" * 32, "k2")
    ledger.forget("hello")
    assert ledger.get("hello") is None and state.read_failed() == {}


def test_journal_round_trip_and_an_older_agents_journal(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    Journal("2.0.0", "cd" * 32, "1.0.0", None, "k").write(state, "hello")
    assert json.loads(state.journal_file("hello").read_text()) == {
        "to": "2.0.0",
        "sha256": "cd" * 32,
        "from": "1.0.0",
        "fromPrevious": None,
        "docKey": "k",
    }
    assert Journal.read(state, "hello") == Journal("2.0.0", "cd" * 32, "1.0.0", None, "k")
    state.journal_file("hello").write_text(json.dumps({"to": "2.0.0", "from": "1.0.0"}))
    old = Journal.read(state, "hello")
    assert old is not None and not old.knows_previous
    Journal.clear(state, "hello")
    assert Journal.read(state, "hello") is None
