"""Observation: what runs now, read from the OS and the install root (never from intent)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import procinfo
from agent.errors import WorkloadError
from agent.procinfo import ProcInfo
from agent.prove import judge_probe
from agent.report import Observed
from agent.runtimes import runtime_for

if TYPE_CHECKING:
    from agent.converge import Converger

PROBE_CACHE_MAX = 64


class Observer:
    """Observes the workloads of a :class:`Converger` (its layout, supervisor and state)."""

    def __init__(self, conv: Converger) -> None:
        self.conv = conv
        self._probe_cache: dict[tuple[int, str], tuple[str | None, str]] = {}

    def observe(self, w: Mapping[str, Any]) -> Observed:
        """What runs now, from the process itself (never from intent)."""
        name = str(w["name"])
        layout = self.conv.layout(name)
        if self.conv.me.name is not None and name == self.conv.me.name:
            me = procinfo.read(os.getpid())
            current = layout.resolved_current()
            return Observed(
                name=name,
                desired_version=str(w.get("version")),
                version=self.conv.me.version,
                pid=os.getpid(),
                started_at=me.start_time if me else None,
                current=str(current) if current else None,
                sha256=layout.installed_sha256(self.conv.me.version)
                if self.conv.me.version
                else None,
                healthy=True,
                health_message="the agent itself (it is answering)",
            )
        info = self.conv.sup.running(name)
        version = sha = None
        healthy, message = False, "not running"
        if info is not None:
            located, evidence = self.conv.locate(name, info)
            version, note = self._probed_version(w, info, located)
            sha = layout.installed_sha256(located) if located else None
            doc = self.conv._doc_for(name, located, w) if located else w
            try:
                health = runtime_for(doc).check_health(doc, 2.0)
                healthy, message = health.ok, health.message
            except WorkloadError as exc:
                healthy, message = False, str(exc)
            if note:
                message = f"{note}; {message}"
            crash = self.conv.sup.crash_note(name)
            if crash:
                message = f"{crash}; {message}"
        else:
            crash = self.conv.sup.crash_note(name)
            if crash:
                message = crash
        current = layout.resolved_current()
        return Observed(
            name=name,
            desired_version=str(w.get("version")) if w.get("version") else None,
            version=version,
            pid=info.pid if info else None,
            started_at=info.start_time if info else None,
            current=str(current) if current else None,
            sha256=sha,
            healthy=healthy,
            health_message=message,
        )

    def _probed_version(
        self, w: Mapping[str, Any], info: ProcInfo, located: str | None
    ) -> tuple[str | None, str]:
        """The version the running process proves, cached per process instance."""
        key = (info.pid, info.start_id)
        if key in self._probe_cache:
            return self._probe_cache[key]
        if located is None:
            result: tuple[str | None, str] = (None, "the running process is not in versions/")
        else:
            name = str(w["name"])
            doc = self.conv._doc_for(name, located, w)
            vdir = Path(os.path.realpath(self.conv.layout(name).version_dir(located)))
            try:
                probe = runtime_for(doc).probe_version(doc, vdir, 10.0)
            except WorkloadError as exc:
                probe = None
                result = (None, str(exc))
            if probe is not None:
                verdict = judge_probe(
                    target=located,
                    configured=probe.configured,
                    ok=probe.ok,
                    output=probe.output,
                    message=probe.message,
                )
                result = (located, "") if verdict.ok else (None, verdict.reason)
        if len(self._probe_cache) > PROBE_CACHE_MAX:
            self._probe_cache.clear()
        self._probe_cache[key] = result
        return result
