"""`fleetkeeper status` against the real reconciler with three real agents: the JSON format
of DESIGN.md (validated by schema/fleet-status), the tables, and exit codes for scripts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import schema
from tests.helpers import interruptible
from tests.helpers.operator_fleet import NODES, operated_fleet


def status(server: str, *args: str, token: str | None = None, **env: str) -> Any:
    environ = {**os.environ, "COLUMNS": "200", **env}
    if token is not None:
        environ["FLEETKEEPER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "status", "--server", server, *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=30,
    )


def test_status_tables_json_and_exit_codes(tmp_path: Path) -> None:
    with operated_fleet(tmp_path) as fleet:
        url, token = fleet.server.url, fleet.server.admin_token
        fleet.release("1.0.0")
        fleet.wait_release("1.0.0", "Succeeded")

        # JSON: the DESIGN.md document, schema-valid, every node converged
        proc = status(url, "--format", "json", token=token)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert schema.errors("fleet-status", doc) == []
        assert sorted(n["node"] for n in doc["nodes"]) == list(NODES)
        for n in doc["nodes"]:
            assert n["health"] == "Healthy" and n["lastSeen"]
            assert [(w["name"], w["desired"], w["running"]) for w in n["workloads"]] == [
                ("hello", "1.0.0", "1.0.0")
            ]
        assert [(r["agent"], r["version"], r["phase"]) for r in doc["releases"]] == [
            ("hello", "1.0.0", "Succeeded")
        ]

        # text, token from a file: both tables, "ago", the approval evidence
        token_file = tmp_path / "admin.token"
        token_file.write_text(token + "\n")
        proc = status(url, "--token-file", str(token_file))
        assert proc.returncode == 0, proc.stderr
        for needle in ("Nodes", "Releases", *NODES, "Healthy", "ago", "hello 1.0.0", "merge "):
            assert needle in proc.stdout, needle
        assert "Succeeded" in proc.stdout and "HTTP Request" not in proc.stderr

        # --watch redraws until Ctrl-C, then exits with the code of what it last saw
        watch = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "status", "--watch", "--interval", "0.3"]
            + ["--server", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "FLEETKEEPER_TOKEN": token, "COLUMNS": "200"},
            preexec_fn=interruptible,
        )
        # Ctrl-C only once a frame is drawn: before that the handler may not be installed yet
        # (a loaded machine can take seconds to import), and 130 would be the right answer.
        stdout, stderr = watch.stdout, watch.stderr
        assert stdout is not None and stderr is not None
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(iter(stdout.readline, "")))
        reader.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("node-a" in line for line in seen):
            time.sleep(0.1)
        time.sleep(0.7)  # at least one redraw after the first frame
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=15)
        reader.join(timeout=15)
        err = stderr.read()
        stdout.close()
        stderr.close()
        out = "".join(seen)
        assert watch.returncode == 0, err
        assert "Releases" in out and "node-a" in out

        # while a rollout runs: exit 4, so `until` loops can wait for it
        fleet.release("1.1.0")
        codes: list[tuple[int, str]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (0, "Succeeded") not in codes:
            proc = status(url, "--format", "json", token=token)
            row = json.loads(proc.stdout)["releases"][-1]
            if row["version"] == "1.1.0":  # the reconciler has seen the merge
                codes.append((proc.returncode, row["phase"]))
            time.sleep(0.2)
        assert (0, "Succeeded") in codes, codes
        rolling = {phase for code, phase in codes if code == 4}
        assert rolling and rolling <= {"Pending", "Progressing", "Soaking"}, codes
        fleet.wait_release("1.1.0", "Succeeded")

        # a halted release: exit 1, the reason shown, the old version still running
        fleet.release("1.2.0", bad_sha256=True)
        fleet.wait_release("1.2.0", "Halted")
        proc = status(url, token=token)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Halted" in proc.stdout and "sha256 mismatch" in proc.stdout
        assert "hello 1.1.0 → 1.2.0" in proc.stdout  # the canary: running 1.1.0, desired 1.2.0
        doc = json.loads(status(url, "--format", "json", token=token).stdout)
        assert {w["running"] for n in doc["nodes"] for w in n["workloads"]} == {"1.1.0"}

        # a wrong token: exit 1 with what to do, and the token is not echoed
        proc = status(url, token="not-the-admin-token")
        assert proc.returncode == 1
        assert "refused the admin token" in proc.stderr and "not-the-admin-token" not in proc.stderr

    # the server is gone: exit 1, saying where it tried
    proc = status(url, token=token)
    assert proc.returncode == 1 and "cannot reach the reconciler" in proc.stderr
