"""The ledger key of a failed target, and an older agent's key recognised after an upgrade."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from agent.ledger import FailedTarget, Ledger
from agent.state import StateDir
from agent.workload import Desired

ENTRY = {"name": "hello", "version": "1.1.0", "artifact": {"url": "u", "sha256": "ab" * 32}}


def test_a_key_stored_by_an_older_agent_is_kept_under_the_new_key(tmp_path: Path) -> None:
    desired = Desired.parse({"generation": 7, "workloads": [ENTRY]})
    # what the agent before retryGeneration stored: sha256 of [generation, entry]
    old = hashlib.sha256(json.dumps([7, ENTRY], sort_keys=True).encode()).hexdigest()[:16]
    assert desired.legacy_key(ENTRY) == old != desired.key(ENTRY)
    ledger = Ledger(StateDir(tmp_path))
    ledger.remember("hello", FailedTarget("1.1.0", "ab" * 32, old, "Failed", "health"))
    ledger.rekey("hello", desired.legacy_key(ENTRY), desired.key(ENTRY))
    got = ledger.get("hello")
    assert got is not None and got.is_target("1.1.0", "ab" * 32, desired.key(ENTRY))
    assert got.message == "health"
    # another document's old key is not taken for this one
    ledger.remember("hello", FailedTarget("1.1.0", "ab" * 32, "0" * 16, "Failed", "x"))
    ledger.rekey("hello", desired.legacy_key(ENTRY), desired.key(ENTRY))
    assert ledger.get("hello") == FailedTarget("1.1.0", "ab" * 32, "0" * 16, "Failed", "x")
