"""`make demo` as a test: scripts/demo.py runs the whole story and ends with every release
Succeeded (the deliberately halted 0.8.5 is superseded by 0.8.6, then 0.8.7 by signed tag)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import interruptible

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_tells_the_whole_story(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "160"}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    # the story, in order
    markers = [
        "Dashboard: http://127.0.0.1:",
        "refused: Unapproved:",
        "fleetkeeper status exit code 1: a release is Unapproved",
        "git merge -q --no-ff release-0.8.4",
        "halted: node gpu-1 reported Failed for inference-agent 0.8.5: sha256 mismatch",
        "still running: gpu-1 0.8.4, lab-1 0.8.4, vps-1 0.8.4",
        "Superseded",
        "fleetkeeper rollout pause inference-agent",
        "paused the rollout of inference-agent 0.8.6",
        "git push -q origin deploy/0.8.7",
        "paused: Paused by operator: change freeze: watch 0.8.7 before it ships",
        "0.8.7 is approved, but no node was given it while paused",
        "resumed the rollout of inference-agent 0.8.7",
        "a release no one approved (6.6.6, /bin/sh)",
        "refused: signed by untrusted key SHA256:",
        "FORGED-MARKER was never created",
        "fleetkeeper secret encrypt secret-reader/api-key --for-release secret-reader",
        "workload read API_KEY (env) and $FLEETKEEPER_SECRETS_DIR/api-key (file): both sha256",
        "checked: the key is in no reconciler file (its SQLite database included)",
        "checked: no token or webhook secret appears in any reconciler or agent log",
        "Final status (fleetkeeper status)",
        "fleetkeeper status exit code 0",
    ]
    positions = [out.find(m) for m in markers]
    missing = [m for m, p in zip(markers, positions, strict=True) if p < 0]
    assert not missing, f"{missing} not in the demo's output:\n{out}"
    assert positions == sorted(positions), dict(zip(markers, positions, strict=True))
    final = out[out.index("Final status") :]
    final_table = final[: final.index("fleetkeeper status exit code")]
    assert "inference-agent │ 0.8.7" in final_table
    assert "Succeeded" in final_table
    for bad in ("Halted", "Progressing", "Stale", "Unhealthy"):
        assert bad not in final_table, final_table
    assert final_table.count("inference-agent 0.8.7") == 3  # every node runs it
    assert "tag deploy/secret-reader-1.0.0 by dana@fleet.demo" in final_table
    # everything it started is gone, and so is its temp folder
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("fleetkeeper-demo-")]
    assert leftovers == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps


def test_demo_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "160"}
    out_path = tmp_path / "demo.out"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "scripts" / "demo.py")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            preexec_fn=interruptible,
        )
    try:
        deadline = time.monotonic() + 60
        while "Dashboard: http" not in out_path.read_text():
            assert proc.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out_path.read_text()
    assert code == 130, text[-3000:]
    assert "interrupted: everything the demo started has been stopped" in text
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps, [line for line in ps.splitlines() if str(tmp_path) in line]
