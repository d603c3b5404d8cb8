"""Process records of the child supervisor, in ``<stateDir>/processes/``.

``<name>.json`` records the workload's process (PID, start identity, argv, cwd, env), so a
restarted agent re-adopts a still-running workload instead of orphaning or duplicating it.
``<name>.retiring`` records the old process of a blue/green handoff until it is stopped
(not ``*.json``: the converge step lists workloads from ``processes/*.json``).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from agent import procinfo
from agent.procinfo import ProcInfo
from agent.state import StateDir, read_json, write_json
from agent.supervise.supervisor import LaunchSpec


class ProcessRecords:
    def __init__(self, state: StateDir) -> None:
        self.state = state

    def write(self, spec: LaunchSpec, pid: int, start_id: str, started: float) -> None:
        write_json(
            self.state.process_file(spec.name),
            {
                "pid": pid,
                "startId": start_id,
                "argv": list(spec.argv),
                "cwd": str(spec.cwd),
                "env": dict(spec.env),
                "user": spec.user,
                "envFile": str(spec.env_file) if spec.env_file else None,
                "startedAt": started,
            },
            mode=0o600,
        )

    def read(self, name: str) -> dict[str, Any] | None:
        rec = read_json(self.state.process_file(name))
        return rec if isinstance(rec, dict) else None

    def drop(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state.process_file(name).unlink()

    def alive(self, name: str) -> ProcInfo | None:
        """The recorded process of ``name`` when it still runs (the same instance)."""
        rec = self.read(name)
        if rec is None or not isinstance(rec.get("pid"), int):
            return None
        info = procinfo.read(rec["pid"])
        if info is None or info.start_id != rec.get("startId"):
            return None
        return info

    @staticmethod
    def spec_of(name: str, rec: dict[str, Any], *, with_env: bool = True) -> LaunchSpec:
        """The launch spec a record describes (to restart an adopted process after a crash)."""
        env = dict(rec.get("env") or {}) if with_env else {}
        user = rec.get("user") if isinstance(rec.get("user"), str) else None
        env_file = rec.get("envFile")
        return LaunchSpec(
            name,
            tuple(rec.get("argv") or ()),
            Path(rec.get("cwd") or "/"),
            env,
            user,
            Path(env_file) if isinstance(env_file, str) and with_env else None,
        )

    # -- the old process of a handoff ----------------------------------------------------
    def _retiring_file(self, name: str) -> Path:
        return self.state.process_file(name).with_suffix(".retiring")

    def write_retiring(self, name: str, pid: int, start_id: str) -> None:
        write_json(self._retiring_file(name), {"pid": pid, "startId": start_id}, mode=0o600)

    def retiring(self, name: str) -> tuple[int, str] | None:
        rec = read_json(self._retiring_file(name))
        if isinstance(rec, dict) and isinstance(rec.get("pid"), int):
            return rec["pid"], str(rec.get("startId"))
        return None

    def drop_retiring(self, name: str) -> None:
        self._retiring_file(name).unlink(missing_ok=True)
