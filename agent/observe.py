"""Observation: what runs now, read from the OS and the install root (never from intent)."""

from __future__ import annotations

import os

from agent import procinfo, secrets
from agent.errors import WorkloadError
from agent.installed import Installed
from agent.procinfo import ProcInfo
from agent.prove import judge_version_probe
from agent.report import Observed
from agent.runtimes import runtime_for
from agent.selfinstall import SelfInfo
from agent.supervise.supervisor import Supervisor
from agent.workload import Workload
from fleetkeeper_common.digests import target_digest

PROBE_CACHE_MAX = 64


class Observer:
    """Observes workloads through the install root and the supervisor's processes."""

    def __init__(self, installed: Installed, supervisor: Supervisor, me: SelfInfo) -> None:
        self.installed = installed
        self.sup = supervisor
        self.me = me
        # (pid, start id) -> (proven version, note): a running process is probed once.
        self._probe_cache: dict[tuple[int, str], tuple[str | None, str]] = {}

    def observe(self, w: Workload) -> Observed:
        """What runs now, from the process itself (never from intent)."""
        if self.me.name is not None and w.name == self.me.name:
            return self._observe_self(w)
        layout = self.installed.layout(w.name)
        info = self.sup.running(w.name)
        version = sha = None
        healthy, message = False, "not running"
        crash = self.sup.crash_note(w.name)
        if info is not None:
            located, _ = self.installed.locate(w.name, info)
            version, note = self._probed_version(w, info, located)
            sha = layout.installed_sha256(located) if located else None
            doc = self.installed.launch_doc(w.name, located, w.doc) if located else w.doc
            try:
                health = runtime_for(doc).check_health(doc, 2.0)
                healthy, message = health.ok, health.message
            except WorkloadError as exc:
                healthy, message = False, str(exc)
            if note:
                message = f"{note}; {message}"
            if crash:
                message = f"{crash}; {message}"
        elif crash:
            message = crash
        current = layout.resolved_current()
        return Observed(
            name=w.name,
            desired_version=w.version or None,
            version=version,
            pid=info.pid if info else None,
            started_at=info.start_time if info else None,
            current=str(current) if current else None,
            sha256=sha,
            healthy=healthy,
            health_message=message,
            config_digest=target_digest(
                self._config_in_use(w.name),
                secrets.in_use(layout.dir, version) if version else None,
            )
            if info is not None
            else None,
        )

    def _config_in_use(self, name: str) -> str | None:
        """The config digest the process reads: a flip whose restart is still owed is not
        in use yet (the process was started with the config before it)."""
        dirs = self.installed.config_dirs(name)
        owed = dirs.owed()
        if owed is not None and owed[0] == dirs.current_key():
            return None
        return dirs.current_digest()

    def _observe_self(self, w: Workload) -> Observed:
        """The agent itself: it runs (it is answering), from the version its code is in."""
        layout = self.installed.layout(w.name)
        me = procinfo.read(os.getpid())
        current = layout.resolved_current()
        return Observed(
            name=w.name,
            desired_version=w.version,
            version=self.me.version,
            pid=os.getpid(),
            started_at=me.start_time if me else None,
            current=str(current) if current else None,
            sha256=layout.installed_sha256(self.me.version) if self.me.version else None,
            healthy=True,
            health_message="the agent itself (it is answering)",
        )

    def _probed_version(
        self, w: Workload, info: ProcInfo, located: str | None
    ) -> tuple[str | None, str]:
        """The version the running process proves, cached per process instance."""
        key = (info.pid, info.start_id)
        if key in self._probe_cache:
            return self._probe_cache[key]
        result: tuple[str | None, str]
        if located is None:
            result = (None, "the running process is not in versions/")
        else:
            doc = self.installed.launch_doc(w.name, located, w.doc)
            try:
                probe = runtime_for(doc).probe_version(
                    doc, self.installed.version_dir(w.name, located), 10.0
                )
            except WorkloadError as exc:
                result = (None, str(exc))
            else:
                verdict = judge_version_probe(located, probe)
                result = (located, "") if verdict.ok else (None, verdict.reason)
        if len(self._probe_cache) > PROBE_CACHE_MAX:
            self._probe_cache.clear()
        self._probe_cache[key] = result
        return result
