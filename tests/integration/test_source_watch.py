"""GitSource on real repositories: local bare repo watched with watchfiles, file:// mirror."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from reconciler.approval import evaluate
from reconciler.config import ApprovalSettings
from reconciler.source import GitSource, mirror_path
from tests.helpers.fleetfiles import basic_fleet, release
from tests.helpers.git import git, init_repo

SETTLE = 0.3  # the file watcher needs a moment to set up its inotify watches


def make_remote(tmp_path: Path) -> tuple[Path, Path]:
    """A bare 'server' repo and a work clone that pushes to it (one merge of a fleet)."""
    bare = init_repo(tmp_path / "server.git", bare=True)
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(bare), str(work))
    git(work, "checkout", "-q", "-b", "main")
    (work / "README.md").write_text("x\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "init")
    git(work, "checkout", "-q", "-b", "topic")
    for rel, text in basic_fleet().items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "fleet")
    git(work, "checkout", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "--no-edit", "topic")
    git(work, "push", "-q", "origin", "main")
    return bare, work


def new_merge(work: Path, version: str) -> str:
    git(work, "checkout", "-q", "-b", f"v{version}")
    path = work / f"releases/infer/{version}.yaml"
    path.write_text(release(version=version))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", version)
    git(work, "checkout", "-q", "main")
    git(work, "merge", "-q", "--no-ff", "--no-edit", f"v{version}")
    return git(work, "rev-parse", "HEAD").stdout.strip()


class Waker:
    """Records when wake() was called and evaluates approval right then (like the loop)."""

    def __init__(self, source: GitSource, state: Path) -> None:
        self.source, self.state = source, state
        self.times: list[float] = []
        self.approved: list[str | None] = []
        self.event = asyncio.Event()

    def __call__(self) -> None:
        result = evaluate(self.source, ApprovalSettings(), None, self.state)
        self.times.append(time.perf_counter())
        self.approved.append(result.revision)
        self.event.set()

    async def next(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()


def test_push_into_local_bare_repo_wakes_within_200ms(tmp_path: Path) -> None:
    bare, work = make_remote(tmp_path)
    source = GitSource(str(bare), tmp_path / "state", "main")
    waker = Waker(source, tmp_path / "state")
    new = new_merge(work, "1.1.0")

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(source.watch(waker, stop, poll_interval=3600))
        await asyncio.sleep(SETTLE)
        await asyncio.to_thread(git, work, "push", "-q", "origin", "main")
        pushed = time.perf_counter()
        await waker.next()
        latency = waker.times[-1] - pushed
        # a packed ref that changes (a tag deleted after pack-refs) is seen too
        git(work, "tag", "-a", "-m", "t", "deploy/x")
        git(work, "push", "-q", "origin", "deploy/x")
        await waker.next()
        git(bare, "pack-refs", "--all", "--prune")
        await asyncio.sleep(0.2)
        waker.event.clear()
        git(work, "push", "-q", "origin", ":refs/tags/deploy/x")
        await waker.next()
        stop.set()
        await task
        return latency

    latency = asyncio.run(scenario())
    assert waker.approved[0] == new
    assert latency < 0.2, f"push seen after {latency * 1000:.0f} ms"
    assert "refs/tags/deploy/x" not in source.refs()


def test_trigger_wakes_a_local_watcher_at_once(tmp_path: Path) -> None:
    bare, _ = make_remote(tmp_path)
    source = GitSource(str(bare), tmp_path / "state", "main")
    waker = Waker(source, tmp_path / "state")

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(source.watch(waker, stop, poll_interval=3600))
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        threading.Thread(target=source.trigger).start()  # the webhook handler's thread
        await waker.next()
        stop.set()
        await task
        return waker.times[-1] - start

    assert asyncio.run(scenario()) < 0.5


def test_mirror_of_file_url_fetches_polls_and_follows_force_push(tmp_path: Path) -> None:
    bare, work = make_remote(tmp_path)
    url = f"file://{bare}"
    state = tmp_path / "state"
    source = GitSource(url, state, "main")
    assert source.path == mirror_path(state, url) and source.path.is_relative_to(state)
    assert source.tip() is None  # nothing fetched yet
    source.fetch()
    first = git(work, "rev-parse", "HEAD").stdout.strip()
    assert source.tip() == first
    waker = Waker(source, state)
    second = new_merge(work, "1.1.0")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(source.watch(waker, stop, poll_interval=0.1))
        git(work, "push", "-q", "origin", "main")
        await waker.next()  # seen by polling
        assert source.tip() == second
        git(work, "reset", "-q", "--hard", first)
        git(work, "push", "-q", "--force", "origin", "main")
        source.trigger()
        await waker.next()
        stop.set()
        await task

    asyncio.run(scenario())
    assert source.tip() == first  # the force-push is mirrored faithfully ...
    result = evaluate(source, ApprovalSettings(), second, state)
    assert result.revision == second  # ... and refused as a rollback
    assert "possible rollback attack" in result.refused[0].reason


def test_unreachable_remote_is_waiting(tmp_path: Path) -> None:
    from reconciler.errors import Waiting

    source = GitSource(f"file://{tmp_path}/missing.git", tmp_path / "state", "main")
    try:
        source.fetch()
    except Waiting as exc:
        assert "cannot fetch" in str(exc)
    else:
        raise AssertionError("fetch of a missing repository did not fail")
