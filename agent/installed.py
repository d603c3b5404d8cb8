"""What is installed under the install root, and how an installed version is launched.

The converge, observe and self-update steps all ask the same questions of the disk: where a
workload's versions live, which version a running process comes from (resolved paths on
both sides, so a symlinked root is still recognised), and how a version was run when it
was staged (its saved launch document, for rollbacks to it later).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import isolation, procinfo, secrets
from agent.configdir import ConfigDirs
from agent.datadir import DataDir
from agent.layout import WorkloadLayout, resolved_within
from agent.procinfo import ProcInfo
from agent.prove import locate_version
from agent.runtimes import Runtime, WorkloadDoc, runtime_for
from agent.state import StateDir, read_json, write_json
from agent.supervise.supervisor import LaunchSpec
from fleetkeeper_common.age import Identity

CONFIG_ENV = "FLEETKEEPER_CONFIG_DIR"
DATA_ENV = "FLEETKEEPER_DATA_DIR"


class Installed:
    def __init__(
        self,
        root: Path,
        state: StateDir,
        workload_user: str | None = None,
        identity: Identity | None = None,
    ) -> None:
        self.root = root
        self.state = state
        self.workload_user = workload_user  # agent config workloadUser; run.user wins
        self.identity = identity  # the node's age identity: opens the workloads' secrets

    def layout(self, name: str) -> WorkloadLayout:
        return WorkloadLayout(self.root, name)

    def managed(self, path: Path | str) -> bool:
        """Is ``path`` inside the install root? Resolved on both sides (symlinked roots)."""
        return resolved_within(path, self.root)

    def version_dir(self, name: str, version: str) -> Path:
        """The resolved ``versions/<version>`` directory (what processes and probes see)."""
        return Path(os.path.realpath(self.layout(name).version_dir(version)))

    def _launch_file(self, name: str, version: str) -> Path:
        return self.state.workload_state(name) / f"{version}.json"

    def save_launch_doc(self, name: str, version: str, doc: Mapping[str, Any]) -> None:
        """Remember how ``version`` is run, for rollbacks to it later."""
        write_json(self._launch_file(name, version), dict(doc))

    def launch_doc(self, name: str, version: str, fallback: WorkloadDoc) -> WorkloadDoc:
        """How ``version`` of ``name`` was run when it was staged (else ``fallback``)."""
        saved = read_json(self._launch_file(name, version))
        return saved if isinstance(saved, dict) else fallback

    def spec(self, doc: WorkloadDoc, version: str) -> tuple[LaunchSpec, Runtime, Path]:
        """How to start ``version`` as described by ``doc``: argv, env, its directory."""
        name = str(doc["name"])
        vdir = self.version_dir(name, version)
        runtime = runtime_for(doc)
        wstate = self.state.workload_state(name)
        wstate.mkdir(parents=True, exist_ok=True)
        argv, env = runtime.command(doc, vdir, wstate)
        user = isolation.effective_user(doc, self.workload_user)
        # decrypted here, at each start, into the version's secrets directory (agent.secrets)
        extra, env_file = secrets.materialize(
            self.layout(name).dir,
            version,
            isolation.with_user(doc, self.workload_user),
            self.identity,
        )
        # set after run.env, so a release cannot point them elsewhere (issue 17)
        data = self.data_dir(name).ensure(isolation.lookup_user(user) if user else None)
        config_dir = str(self.config_dirs(name).link)
        env = {**env, **extra, CONFIG_ENV: config_dir, DATA_ENV: str(data)}
        return LaunchSpec(name, tuple(argv), vdir, env, user, env_file), runtime, vdir

    def config_dirs(self, name: str) -> ConfigDirs:
        return ConfigDirs(self.layout(name).dir)

    def data_dir(self, name: str) -> DataDir:
        return DataDir(self.layout(name).dir)

    def locate(self, name: str, info: ProcInfo) -> tuple[str | None, str]:
        """The version ``info`` runs from (None: not from this workload's versions) and the
        evidence used."""
        layout = self.layout(name)
        evidence = [(kind, Path(os.path.realpath(p))) for kind, p in procinfo.evidence_paths(info)]
        return locate_version(evidence, Path(os.path.realpath(layout.versions)))

    def belongs(self, name: str) -> Callable[[ProcInfo], bool]:
        """For adoption: a recorded process is ours when it runs from this workload's versions."""
        return lambda info: self.locate(name, info)[0] is not None

    def known_workloads(self) -> set[str]:
        """Workloads a supervisor has a process record of (they may still run)."""
        procs = self.state.process_file("x").parent
        return {p.stem for p in procs.glob("*.json")} if procs.is_dir() else set()
