"""The child-process supervisor with real processes: crash backoff, adoption, group stop."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agent import procinfo
from agent.state import StateDir
from agent.supervise.child import ChildSupervisor
from agent.supervise.supervisor import LaunchSpec
from tests.helpers.artifacts import program_source


def script(tmp: Path, name: str, text: str) -> LaunchSpec:
    path = tmp / f"{name}.py"
    path.write_text(text)
    return LaunchSpec(name, (sys.executable, str(path)), tmp)


def test_crashing_workload_is_restarted_with_growing_backoff(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    sup = ChildSupervisor(state, backoff_base=0.2, backoff_cap=5)
    prog = tmp_path / "crashy"
    prog.write_text(program_source("crashy", "1.0.0", crash_after=0.2))
    prog.chmod(0o755)
    spec = LaunchSpec("crashy", (str(prog), "--port", "0"), tmp_path)
    starts: list[tuple[int, float]] = [(sup.start(spec).pid, time.monotonic())]
    try:
        deadline = time.monotonic() + 15
        while len(starts) < 4 and time.monotonic() < deadline:
            sup.tick()
            info = sup.running("crashy")
            if info is not None and info.pid != starts[-1][0]:
                starts.append((info.pid, time.monotonic()))
            time.sleep(0.01)
        assert len(starts) == 4, starts
        gaps = [b[1] - a[1] for a, b in zip(starts, starts[1:], strict=False)]
        # Each gap is the 0.2 s run plus a doubling delay (0.2, 0.4, 0.8).
        assert gaps[0] < gaps[1] < gaps[2], gaps
        assert gaps[2] - gaps[0] > 0.45, gaps
        note = sup.crash_note("crashy")
        assert note is not None and "exited (code 4)" in note
        assert "crashy 1.0.0 listening" in state.log_file("crashy").read_text()
    finally:
        sup.stop("crashy")


def start_in_another_agent(state: StateDir, spec: LaunchSpec) -> int:
    """Start ``spec`` from a separate Python process that then exits (a gone agent)."""
    code = (
        "import sys; from pathlib import Path\n"
        "from agent.supervise.child import ChildSupervisor\n"
        "from agent.supervise.supervisor import LaunchSpec\n"
        "from agent.state import StateDir\n"
        f"sup = ChildSupervisor(StateDir(Path({str(state.root)!r})))\n"
        f"print(sup.start(LaunchSpec({spec.name!r}, {spec.argv!r}, Path({str(spec.cwd)!r}))).pid)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def in_dir(path: Path) -> Callable[[procinfo.ProcInfo], bool]:
    """Adoption predicate: the process works in ``path`` (never "anything": adoption stops
    unrecorded processes the predicate claims)."""
    real = os.path.realpath(path)
    return lambda info: info.cwd is not None and os.path.realpath(info.cwd) == real


def test_unrecorded_strays_are_stopped_and_strangers_left_alone(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    work = tmp_path / "work"
    work.mkdir()
    spec = script(work, "stray", "import time\ntime.sleep(60)\n")
    stray = start_in_another_agent(state, spec)
    state.process_file("stray").unlink()  # killed before it could record the PID
    # Someone's shell sitting in the same directory: a session leader too, but not ours.
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], cwd=work, start_new_session=True
    )
    try:
        assert ChildSupervisor(state).adopt("stray", in_dir(work)) is None
        deadline = time.monotonic() + 5
        while procinfo.alive(stray) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not procinfo.alive(stray)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_new_supervisor_adopts_instead_of_duplicating(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    spec = script(tmp_path, "sleeper", "import time\ntime.sleep(60)\n")
    pid = start_in_another_agent(state, spec)
    info = procinfo.read(pid)
    assert info is not None
    # A restarted agent: a fresh supervisor over the same state directory.
    second = ChildSupervisor(state)
    adopted = second.adopt("sleeper", in_dir(tmp_path))
    assert adopted is not None and adopted.pid == info.pid
    assert second.running("sleeper") == adopted
    second.tick()
    assert procinfo.alive(info.pid)
    # One that is not ours any more is stopped, not adopted.
    third = ChildSupervisor(state)
    assert third.adopt("sleeper", lambda _i: False) is None
    deadline = time.monotonic() + 5
    while procinfo.alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not procinfo.alive(info.pid)
    assert not state.process_file("sleeper").exists()


def test_a_recycled_pid_is_not_adopted(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    pid = start_in_another_agent(state, script(tmp_path, "short", "import time\ntime.sleep(60)\n"))
    info = procinfo.read(pid)
    assert info is not None
    rec = state.process_file("short")
    text = rec.read_text().replace(f'"startId": "{info.start_id}"', '"startId": "1"')
    rec.write_text(text)
    try:
        assert ChildSupervisor(state).adopt("short", in_dir(tmp_path / "nowhere")) is None
    finally:
        os.killpg(info.pid, 9)


def test_stop_ends_the_whole_group_with_sigkill_after_grace(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    sup = ChildSupervisor(state, grace_seconds=0.4)
    pidfile = tmp_path / "grandchild.pid"
    spec = script(
        tmp_path,
        "stubborn",
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "c = subprocess.Popen([sys.executable, '-c', "
        "'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(60)\n",
    )
    info = sup.start(spec)
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = int(pidfile.read_text())
    t = time.monotonic()
    sup.stop("stubborn")
    elapsed = time.monotonic() - t
    assert elapsed >= 0.4  # it waited for the grace period...
    time.sleep(0.1)
    assert not procinfo.alive(info.pid)  # ...then killed the leader
    assert not procinfo.alive(grandchild)  # and everything it started


def test_output_goes_to_a_rotated_log(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    sup = ChildSupervisor(state, log_max_bytes=2000, log_keep=2)
    spec = script(
        tmp_path,
        "chatty",
        "import time\nfor i in range(400):\n    print('line', i, flush=True)\ntime.sleep(60)\n",
    )
    sup.start(spec)
    try:
        log = state.log_file("chatty")
        deadline = time.monotonic() + 5
        while "line 399" not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sup.tick()
        rotated = log.with_name("chatty.log.1")
        assert rotated.exists() and "line 399" in rotated.read_text()
        assert log.stat().st_size < 2000
    finally:
        sup.stop("chatty")
