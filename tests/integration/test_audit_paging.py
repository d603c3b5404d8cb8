"""`fleetkeeper audit --limit N` shows the newest N events even when the log holds more than
one API page (10,000 events): the client walks the pages forward and keeps the tail."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.server import running_server

EXTRA = 10_050


def test_audit_limit_keeps_the_newest_events_across_pages(tmp_path: Path) -> None:
    with running_server(tmp_path / "server") as server:
        db = sqlite3.connect(server.state_dir / "state.db", timeout=30)
        with db:  # one transaction: a long-running fleet's history
            t0 = time.time() - 3600
            db.executemany(
                "INSERT INTO audit (time, kind, message, revision, release, node, details)"
                " VALUES (?, 'rollout-step', ?, NULL, 'hello', NULL, '{}')",
                [(t0 + i * 0.01, f"step {i}") for i in range(EXTRA)],
            )
        last_id = db.execute("SELECT max(id) FROM audit").fetchone()[0]
        db.close()

        def audit(*args: str) -> list[dict[str, object]]:
            proc = subprocess.run(
                [sys.executable, "-m", "reconciler.cli", "audit", "--server", server.url]
                + ["--format", "json", *args],
                capture_output=True,
                text=True,
                env={**os.environ, "FLEETKEEPER_TOKEN": server.admin_token},
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            events: list[dict[str, object]] = json.loads(proc.stdout)["events"]
            return events

        newest = audit("--limit", "5")
        assert [e["id"] for e in newest] == list(range(last_id - 4, last_id + 1))
        everything = audit("--limit", "100000")
        ids = [e["id"] for e in everything]
        assert len(ids) == last_id and ids == sorted(set(ids))  # every event once, in order
        recent = audit("--since", "2m")  # only what the server itself appended just now
        assert recent and all(e["kind"] != "rollout-step" for e in recent)
