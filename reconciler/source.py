"""The fleet repo as a source: a local repository, or a mirror of a remote kept with pygit2.

- A local path (bare or with a work tree) is opened in place; ``fetch`` is a no-op and
  ``watch`` wakes the reconcile loop when the refs change (watchfiles on ``refs/`` and
  ``packed-refs``, so a ``git push`` into a local bare repo is seen within ~100 ms).
- A URL (``file://``, ``https://``, ``ssh://``) is mirrored into ``<stateDir>/mirrors/``:
  branches and tags are fetched with force and prune, so a force-push or a moved tag is
  mirrored faithfully and the approval step can see and refuse it. ``watch`` fetches every
  ``poll_interval`` seconds (jittered) and wakes the loop when a ref moved.
- ``trigger()`` (the webhook endpoint) wakes the watcher at once: fetch now, then wake.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pygit2

from reconciler.errors import ConfigError, Waiting, sanitize
from reconciler.threadsafe import call_in_loop

if TYPE_CHECKING:  # watchfiles comes with the server extra; plan and validate never watch
    from watchfiles import Change

log = logging.getLogger(__name__)

MIRROR_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
REMOTE_NAME = "origin"
JITTER = 0.2  # poll intervals vary by +-20% so that replicas do not fetch in step
WATCH_STEP_MS = 20  # how long the ref files must be quiet before a change is reported
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(url_or_path: str) -> bool:
    return _URL.match(url_or_path) is not None


def mirror_path(state_dir: Path, url: str) -> Path:
    """``<stateDir>/mirrors/<name>-<hash>.git``: one mirror per URL, credentials not in it."""
    clean = sanitize(url)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", clean.rstrip("/").rsplit("/", 1)[-1])[:40]
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return state_dir / "mirrors" / f"{name.removesuffix('.git') or 'repo'}-{digest}.git"


class _Callbacks(pygit2.RemoteCallbacks):
    """ssh:// credentials from the ssh-agent (the reconciler has no key files of its own)."""

    def credentials(
        self, url: str, username_from_url: str | None, allowed_types: pygit2.enums.CredentialType
    ) -> pygit2.Keypair:
        if allowed_types & pygit2.enums.CredentialType.SSH_KEY:
            return pygit2.KeypairFromAgent(username_from_url or "git")
        raise pygit2.Passthrough


class GitSource:
    def __init__(self, url_or_path: str, state_dir: Path, branch: str) -> None:
        self.url = url_or_path
        self.state_dir = state_dir
        self.branch = branch
        self.is_mirror = is_url(url_or_path)
        self._fetch_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._triggered: asyncio.Event | None = None
        self._pending_trigger = False
        if self.is_mirror:
            self.path = mirror_path(state_dir, url_or_path)
            self._repo = self._open_mirror()
        else:
            self.path = Path(url_or_path)
            try:
                self._repo = pygit2.Repository(str(self.path))
            except (pygit2.GitError, KeyError) as exc:
                raise ConfigError(
                    f"repo: {self.path} is not a git repository ({exc}); give the path of a "
                    "local repository (bare or not) or a URL to mirror"
                ) from exc

    def __repr__(self) -> str:
        return f"GitSource({sanitize(self.url)!r}, branch={self.branch!r})"

    # -- the repository ------------------------------------------------------------------

    def _open_mirror(self) -> pygit2.Repository:
        if (self.path / "HEAD").is_file():
            repo = pygit2.Repository(str(self.path))
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            repo = pygit2.init_repository(str(self.path), bare=True)
        names = [r.name for r in repo.remotes]
        if REMOTE_NAME not in names:
            repo.remotes.create(REMOTE_NAME, self.url, MIRROR_REFSPECS[0])
            for spec in MIRROR_REFSPECS[1:]:
                repo.remotes.add_fetch(REMOTE_NAME, spec)
        elif repo.remotes[REMOTE_NAME].url != self.url:
            repo.remotes.set_url(REMOTE_NAME, self.url)
        return repo

    def repository(self) -> pygit2.Repository:
        return self._repo

    def fetch(self) -> None:
        """Bring the mirror up to date (no-op for a local repository)."""
        if not self.is_mirror:
            return
        with self._fetch_lock:
            # Its own handle: the fetch runs in a worker thread while the loop reads the
            # repository through ``repository()`` (libgit2 handles are not shared safely).
            remote = pygit2.Repository(str(self.path)).remotes[REMOTE_NAME]
            try:
                remote.fetch(
                    list(MIRROR_REFSPECS),
                    callbacks=_Callbacks(),
                    prune=pygit2.enums.FetchPrune.PRUNE,
                )
            except (pygit2.GitError, KeyError, OSError) as exc:
                raise Waiting(
                    f"cannot fetch {sanitize(self.url)}: {sanitize(str(exc))}; will retry",
                    reason="FetchFailed",
                ) from exc

    def tip(self) -> str | None:
        ref = self._repo.references.get(f"refs/heads/{self.branch}")
        if ref is None:
            return None
        return str(ref.resolve().target)

    def refs(self) -> dict[str, str]:
        """The protected branch and every tag: what approval reads."""
        out: dict[str, str] = {}
        for name in self._repo.references:
            if name == f"refs/heads/{self.branch}" or name.startswith("refs/tags/"):
                ref = self._repo.references.get(name)
                if ref is not None:
                    out[name] = str(ref.target)
        return out

    # -- waking the loop -----------------------------------------------------------------

    def trigger(self) -> None:
        """Wake the watcher now (thread-safe): fetch, then wake the loop."""
        loop, event = self._loop, self._triggered
        if loop is None or event is None or loop.is_closed():
            self._pending_trigger = True
            return
        call_in_loop(loop, event.set)

    async def watch(
        self, wake: Callable[[], None], stop: asyncio.Event, poll_interval: float
    ) -> None:
        """Call ``wake()`` whenever the branch or a tag moved, until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self._triggered = asyncio.Event()
        if self._pending_trigger:
            self._pending_trigger = False
            self._triggered.set()
        tasks = [asyncio.create_task(self._poll(wake, stop, poll_interval))]
        if not self.is_mirror:
            tasks.append(asyncio.create_task(self._watch_files(wake, stop)))
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            self._loop = None
            self._triggered = None

    async def _poll(self, wake: Callable[[], None], stop: asyncio.Event, interval: float) -> None:
        assert self._triggered is not None
        triggered = self._triggered
        seen = self.refs()
        while not stop.is_set():
            delay = interval * random.uniform(1 - JITTER, 1 + JITTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(triggered.wait(), timeout=delay)
            was_triggered = triggered.is_set()
            triggered.clear()
            try:
                await asyncio.to_thread(self.fetch)
            except Waiting as exc:
                log.warning("%s", exc)
            now = self.refs()
            if now != seen or was_triggered:
                seen = now
                wake()

    async def _watch_files(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        gitdir = Path(self._repo.path).resolve()
        refs_dir = str(gitdir / "refs") + os.sep
        packed = str(gitdir / "packed-refs")

        # watchfiles' default filter drops every path under .git: ours keeps the refs only.
        def refs_only(_change: Change, path: str) -> bool:
            return path.startswith((refs_dir, packed))

        seen = self.refs()
        try:
            await self._watch_refs(gitdir, refs_only, stop, wake, seen)
        except Exception:  # the watcher is an accelerator: polling still runs
            log.exception("watching %s failed; falling back to polling", gitdir)

    async def _watch_refs(
        self,
        gitdir: Path,
        refs_only: Callable[[Change, str], bool],
        stop: asyncio.Event,
        wake: Callable[[], None],
        seen: dict[str, str],
    ) -> None:
        from watchfiles import awatch

        async for _changes in awatch(
            gitdir, watch_filter=refs_only, stop_event=stop, step=WATCH_STEP_MS, debounce=400
        ):
            now = self.refs()
            if now != seen:
                seen = now
                wake()
