"""`fleetkeeper audit` against the real reconciler with real agents: who approved what,
which revision was refused and why, each rollout step, the halt, the node that went stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers.operator_fleet import operated_fleet


def audit(server: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "audit", "--server", server, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "FLEETKEEPER_TOKEN": token, "COLUMNS": "250"},
        timeout=30,
    )


def events(server: str, token: str, *args: str) -> list[dict[str, Any]]:
    proc = audit(server, token, "--format", "json", *args)
    assert proc.returncode == 0, proc.stderr
    found: list[dict[str, Any]] = json.loads(proc.stdout)["events"]
    return found


def test_audit_tells_who_approved_what_and_what_happened(tmp_path: Path) -> None:
    with operated_fleet(tmp_path, ttl=3) as fleet:
        url, token = fleet.server.url, fleet.server.admin_token
        merged = fleet.release("1.0.0")
        fleet.wait_release("1.0.0", "Succeeded")
        direct = fleet.direct_push("1.1.0")
        deadline = time.monotonic() + 20
        while not any(e["revision"] == direct for e in events(url, token, "--kind", "refused")):
            assert time.monotonic() < deadline, "the direct push was never refused"
            time.sleep(0.3)
        fleet.repo.change({}, "revert the direct push", remove=["releases/hello/1.1.0.yaml"])
        halted_merge = fleet.release("1.2.0", bad_sha256=True)
        fleet.wait_release("1.2.0", "Halted")
        fleet.agents[2].stop()  # node-c goes silent: Stale after the 3 s heartbeat TTL
        deadline = time.monotonic() + 20
        while not events(url, token, "--kind", "stale"):
            assert time.monotonic() < deadline, "node-c never went stale"
            time.sleep(0.3)

        every = events(url, token, "--since", "10m")
        ids = [e["id"] for e in every]
        assert ids == sorted(ids), "in the order they were appended"
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for e in every:
            by_kind.setdefault(e["kind"], []).append(e)

        # who approved what
        approved = {e["revision"]: e for e in by_kind["approved"]}
        assert merged in approved and halted_merge in approved
        assert approved[merged]["details"]["kind"] == "merge"
        # which revision was refused, and why
        (refusal,) = [e for e in by_kind["refused"] if e["revision"] == direct]
        assert "Unapproved" in refusal["message"] and "without a merge" in refusal["message"]
        assert "releases/hello/1.1.0.yaml" in refusal["message"]
        # each rollout step, with the release it belongs to
        for kind in ("rollout-started", "batch-started", "batch-done", "succeeded"):
            assert by_kind[kind] and all(e["release"] == "hello" for e in by_kind[kind]), kind
        assert {e["revision"] for e in by_kind["succeeded"]} == {merged}
        # the halt: which node, which reason
        (halt,) = by_kind["halted"]
        assert halt["node"] == "node-a" and "sha256 mismatch" in halt["message"]
        assert halt["revision"] == halted_merge
        # the node that went stale
        assert [e["node"] for e in by_kind["stale"]] == ["node-c"]
        assert {e["node"] for e in by_kind["registered"]} == {"node-a", "node-b", "node-c"}

        # --limit keeps the newest events
        assert events(url, token, "--limit", "3") == every[-3:]

        # --since: relative, ISO, in the future, and a wrong value
        assert len(events(url, token, "--since", "2h")) == len(every)
        assert events(url, token, "--since", "2099-01-01") == []
        last = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(every[-1]["time"] + 1))
        assert events(url, token, "--since", last) == []
        bad = audit(url, token, "--since", "yesterday")
        assert bad.returncode == 1 and "expected a duration like 10m" in bad.stderr

        # the table for people
        text = audit(url, token, "--since", "1d")
        assert text.returncode == 0, text.stderr
        for needle in ("Audit log", "refused", direct[:10], "halted", "node-a", "stale", "node-c"):
            assert needle in text.stdout, needle
