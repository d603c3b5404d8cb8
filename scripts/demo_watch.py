"""How `make demo` follows the fleet: polls the admin API, prints a line per node change
and the status table per batch or phase change, until a condition holds."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from demo_fleet import AGENT, DEMO_NODES
from demo_procs import DemoFailed, Processes
from demo_ui import console

from reconciler.views.client import AdminClient
from reconciler.views.tables import fleet_view

STEP_TIMEOUT = 45.0


def current_release(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The current rollout of the demo agent (a superseded one is listed before it)."""
    rows = [r for r in status.get("releases") or [] if r.get("agent") == AGENT]
    return dict(rows[-1]) if rows else None


def running_versions(status: Mapping[str, Any]) -> dict[str, str | None]:
    out = {}
    for n in status.get("nodes") or []:
        for w in n.get("workloads") or []:
            if w.get("name") == AGENT:
                out[str(n.get("node"))] = w.get("running")
    return out


class Fleet:
    """Watches the reconciler through its admin API and prints the table as things move."""

    def __init__(self, client: AdminClient, procs: Processes) -> None:
        self.client = client
        self.procs = procs

    def show(self, status: Mapping[str, Any]) -> None:
        console.print(fleet_view(status, time.time()))

    def wait(
        self,
        what: str,
        done: Callable[[Mapping[str, Any]], bool],
        timeout: float = STEP_TIMEOUT,
        tables: bool = True,
    ) -> Mapping[str, Any]:
        """Poll until ``done``; a line per node change, the table per batch/phase change."""
        deadline = time.monotonic() + timeout
        last_rel: object = None
        last_nodes: object = None
        status: Mapping[str, Any] = {}
        while time.monotonic() < deadline:
            self.procs.check()
            with contextlib.suppress(Exception):
                status = self.client.fleet()
                rel = current_release(status) or {}
                rel_key = (rel.get("version"), rel.get("phase"), rel.get("batch"))
                nodes_key = progress_line(status)
                if tables and rel_key != last_rel and last_rel is not None:
                    self.show(status)
                elif nodes_key != last_nodes:
                    console.print(nodes_key, highlight=False)
                last_rel, last_nodes = rel_key, nodes_key
                if done(status):
                    return status
            time.sleep(0.3)
        if status:
            self.show(status)
        raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_release(
        self, version: str, phases: Sequence[str], tables: bool = True
    ) -> Mapping[str, Any]:
        def done(status: Mapping[str, Any]) -> bool:
            rel = current_release(status)
            if rel is None or rel.get("version") != version or rel.get("phase") not in phases:
                return False
            if "Succeeded" in phases and rel.get("phase") == "Succeeded":
                return all(v == version for v in running_versions(status).values()) and len(
                    running_versions(status)
                ) == len(DEMO_NODES)
            return True

        return self.wait(f"{AGENT} {version} to be {'/'.join(phases)}", done, tables=tables)

    def wait_audit(self, revision: str, kinds: Sequence[str]) -> Mapping[str, Any]:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            self.procs.check()
            with contextlib.suppress(Exception):
                for e in self.client.audit(limit=1000):
                    if e.get("revision") == revision and e.get("kind") in kinds:
                        return dict(e)
            time.sleep(0.3)
        raise DemoFailed(f"no {'/'.join(kinds)} audit event for {revision[:10]}")


def progress_line(status: Mapping[str, Any]) -> str:
    """ "  0.8.4 Progressing 1/2 | gpu-1 0.8.3->0.8.4 Downloading, vps-1 0.8.3 Healthy, ..." """
    rel = current_release(status) or {}
    cells = []
    for n in sorted(status.get("nodes") or [], key=lambda n: str(n.get("node"))):
        for w in n.get("workloads") or []:
            if w.get("name") != AGENT:
                continue
            running, desired = w.get("running") or "-", w.get("desired") or "-"
            version = running if running == desired else f"{running}->{desired}"
            cells.append(f"{n.get('node')} {version} {w.get('phase')}")
    head = f"{rel.get('version', '-')} {rel.get('phase', '-')} {rel.get('batch') or ''}".strip()
    return f"  {head:<26} | " + ", ".join(cells)
