"""Display rows, exit codes, times and rich tables from fleet status documents (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from reconciler.store.base import AuditEvent
from reconciler.views.tables import audit_table, fleet_view
from reconciler.views.timefmt import ago, duration, parse_since, to_unix
from reconciler.views.view import (
    EXIT_FAILED,
    EXIT_IN_PROGRESS,
    EXIT_OK,
    approval_short,
    audit_rows,
    exit_code,
    node_rows,
    release_rows,
    summary,
)

NOW = 1_800_000_000.0
SHA = "0123456789abcdef0123456789abcdef01234567"


def _status(*phases: str) -> dict[str, Any]:
    return {
        "revision": SHA,
        "approval": {"kind": "merge", "ref": SHA, "signers": []},
        "nodes": [
            {
                "node": "vps-1",
                "health": "Stale",
                "lastSeen": "2027-01-15T07:59:00Z",
                "platform": "linux/amd64",
                "accelerator": "cpu",
                "roles": ["inference", "coding"],
                "workloads": [
                    {"name": "echo", "desired": "1.1.0", "running": "1.0.0", "phase": "Failed"}
                ],
            },
            {
                "node": "gpu-1",
                "health": "Healthy",
                "lastSeen": "2027-01-15T07:59:48Z",
                "workloads": [
                    {"name": "echo", "desired": "1.1.0", "running": "1.1.0", "phase": "Healthy"}
                ],
            },
        ],
        "releases": [
            {
                "agent": f"a{i}",
                "version": "1.0.0",
                "phase": p,
                "batch": "1/3",
                "reason": "checksum mismatch" if p == "Halted" else None,
                "soakRemainingSeconds": 42,
            }
            for i, p in enumerate(phases)
        ],
    }


@pytest.mark.parametrize(
    ("phases", "want"),
    [
        ((), EXIT_OK),
        (("Succeeded",), EXIT_OK),
        (("Succeeded", "Superseded"), EXIT_OK),
        (("Succeeded", "Progressing"), EXIT_IN_PROGRESS),
        (("Soaking",), EXIT_IN_PROGRESS),
        (("Pending", "Halted"), EXIT_FAILED),
        (("Invalid",), EXIT_FAILED),
        (("Unapproved", "Succeeded"), EXIT_FAILED),
    ],
)
def test_exit_code(phases: tuple[str, ...], want: int) -> None:
    assert exit_code(_status(*phases)) == want


@pytest.mark.parametrize(
    ("seconds", "want"),
    [(0, "0s"), (12.4, "12s"), (60, "1m"), (250, "4m 10s"), (7500, "2h 5m"), (90000, "1d 1h")],
)
def test_duration(seconds: float, want: str) -> None:
    assert duration(seconds) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10m", NOW - 600),
        ("2h", NOW - 7200),
        ("1d", NOW - 86400),
        (" 1w ", NOW - 604800),
        ("1700000000", 1_700_000_000.0),
        ("2026-11-25", to_unix("2026-11-25T00:00:00+00:00")),
        ("2026-11-25T07:00:00Z", to_unix("2026-11-25T07:00:00+00:00")),
    ],
)
def test_parse_since(text: str, want: float) -> None:
    assert parse_since(text, NOW) == want


@pytest.mark.parametrize("bad", ["", "yesterday", "10x", "-5m"])
def test_parse_since_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since(bad, NOW)


def test_node_rows_mark_stale_and_converged() -> None:
    now = to_unix("2027-01-15T08:00:00Z")
    assert now is not None
    rows = node_rows(_status(), now)
    assert [r.node for r in rows] == ["gpu-1", "vps-1"]
    gpu, vps = rows
    assert (gpu.tone, gpu.last_seen, gpu.workloads[0].converged) == ("ok", "12s ago", True)
    assert (vps.tone, vps.last_seen, vps.roles) == ("stale", "1m ago", "inference, coding")
    assert vps.workloads[0].tone == "bad" and not vps.workloads[0].converged
    assert ago(None, now) == "never"


@pytest.mark.parametrize(
    ("approval", "want"),
    [
        (None, "-"),
        ({"kind": "merge", "ref": SHA, "signers": []}, "merge 0123456789"),
        ({"kind": "tag", "ref": "deploy/1.2.0", "signers": ["alice"]}, "tag deploy/1.2.0 by alice"),
    ],
)
def test_approval_short(approval: object, want: str) -> None:
    assert approval_short(approval) == want


def test_release_rows_carry_soak_reason_and_timeline() -> None:
    status = _status("Halted")
    status["releases"][0]["batches"] = [
        {"nodes": ["gpu-1"], "state": "Succeeded", "startedAt": NOW - 30, "finishedAt": NOW - 5},
        {"nodes": ["vps-1", "mac-1"], "state": "Halted", "startedAt": NOW - 4},
    ]
    (row,) = release_rows(status, NOW)
    assert (row.phase, row.tone, row.reason, row.soak_left) == (
        "Halted",
        "bad",
        "checksum mismatch",
        "42s",
    )
    assert row.approval == "merge 0123456789"
    assert [(b.index, b.nodes, b.tone, b.finished) for b in row.batches] == [
        (1, ("gpu-1",), "ok", "5s ago"),
        (2, ("vps-1", "mac-1"), "bad", "-"),
    ]


@pytest.mark.parametrize(
    ("phase", "want"), [("Unapproved", "-"), ("Invalid", "-"), ("Halted", "merge 0123456789")]
)
def test_blocked_releases_show_no_approval(phase: str, want: str) -> None:
    (row,) = release_rows(_status(phase), NOW)
    assert row.approval == want


def test_tables_render_every_value() -> None:
    console = Console(width=200, record=True, color_system=None)
    console.print(fleet_view(_status("Halted", "Succeeded"), NOW))
    text = console.export_text()
    for needle in ("gpu-1", "vps-1", "Stale", "echo 1.0.0 → 1.1.0", "checksum mismatch", "1/3"):
        assert needle in text


def test_audit_rows_from_store_values_and_json() -> None:
    events: list[object] = [
        AuditEvent(time=NOW, kind="refused", message="no merge", revision=SHA),
        {"time": "2027-01-15T08:00:00Z", "kind": "rollout-step", "message": "batch 1/3"},
    ]
    rows = audit_rows(events)
    assert [(r.kind, r.tone, r.revision) for r in rows] == [
        ("refused", "bad", "0123456789"),
        ("rollout-step", "busy", "-"),
    ]
    console = Console(width=200, record=True, color_system=None)
    console.print(audit_table(events))
    assert "batch 1/3" in console.export_text()


def test_unlisted_nodes_render_muted_and_apart_from_the_healthy_count() -> None:
    status = _status("Succeeded")
    status["nodes"].append(
        {
            "node": "evil-1",
            "health": "Unlisted",
            "lastSeen": None,
            "platform": "linux/amd64",
            "accelerator": "cpu",
            "roles": ["inference"],
            "runtimes": {},
            "workloads": [],
        }
    )
    rows = {r.node: r for r in node_rows(status, NOW)}
    assert rows["evil-1"].tone == "muted"
    assert "1 unlisted (no workload)" in summary(status)
    console = Console(width=200, record=True, color_system=None)
    console.print(fleet_view(status, NOW))
    assert "Unlisted" in console.export_text()
