"""The loop's status conditions from what a pass found (``conditions.summarize``), by table."""

from __future__ import annotations

import pytest

from reconciler.plan.conditions import Findings, rollout_progress, summarize
from reconciler.plan.state import Batch, Halt, RolloutState, state_to_json
from reconciler.spec import JSON

SHA = "a" * 40
NOW = 1000.0

# (name, findings, want {type: (status, reason, message)})
CASES: list[tuple[str, Findings, dict[str, tuple[str, str, str]]]] = [
    (
        "all good",
        Findings(SHA, planned=True),
        {
            "Stalled": ("False", "Succeeded", "nothing needs a human"),
            "Reconciling": ("False", "Succeeded", "no rollout in progress"),
            "Ready": ("True", "Succeeded", f"applied revision {SHA}"),
        },
    ),
    (
        "no approved revision yet",
        Findings(None, planned=False),
        {
            "Stalled": ("False", "Succeeded", "nothing needs a human"),
            "Ready": ("False", "NoApprovedRevision", "no approved revision yet"),
        },
    ),
    (
        "a rollout moving",
        Findings(SHA, planned=True, busy=["web 1.1.0 Soaking batch 1/2"]),
        {
            "Reconciling": ("True", "Progressing", "web 1.1.0 Soaking batch 1/2"),
            "Ready": ("True", "Succeeded", f"applied revision {SHA}"),
        },
    ),
    (
        "halted rollout stalls and unreadies",
        Findings(SHA, planned=True, halted=["web 1.1.0: n1 failed"]),
        {
            "Stalled": ("True", "RolloutHalted", "web 1.1.0: n1 failed"),
            "Ready": ("False", "RolloutHalted", "web 1.1.0: n1 failed"),
        },
    ),
    (
        "error first, then halt, then unapproved, joined",
        Findings(
            SHA,
            planned=True,
            stalled=[("GitError", "git failed")],
            halted=["web 1.1.0: n1 failed"],
            unapproved="direct push",
        ),
        {
            "Stalled": ("True", "GitError", "git failed; web 1.1.0: n1 failed; direct push"),
            "Ready": ("False", "GitError", "git failed"),
        },
    ),
    (
        "invalid hides the unapproved tip",
        Findings(SHA, planned=True, stalled=[("Invalid", "Invalid: x")], unapproved="push"),
        {"Stalled": ("True", "Invalid", "Invalid: x")},
    ),
    (
        "unapproved tip alone",
        Findings(SHA, planned=True, unapproved="direct push to main"),
        {
            "Stalled": ("True", "Unapproved", "direct push to main"),
            "Ready": ("False", "Unapproved", "direct push to main"),
        },
    ),
    (
        "fetch waiting wins Ready",
        Findings(SHA, planned=True, waiting=("FetchFailed", "remote hung up")),
        {
            "Stalled": ("False", "Succeeded", "nothing needs a human"),
            "Ready": ("False", "FetchFailed", "remote hung up"),
        },
    ),
    (
        "stopped before a plan: Ready carries the error",
        Findings(None, planned=False, stalled=[("InternalError", "KeyError: 'x'")]),
        {"Ready": ("False", "InternalError", "KeyError: 'x'")},
    ),
]


@pytest.mark.parametrize(("findings", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_summarize(findings: Findings, want: dict[str, tuple[str, str, str]]) -> None:
    got = summarize(findings, [], NOW)
    assert [c.type for c in got] == ["Stalled", "Reconciling", "Ready"]
    by_type = {c.type: (c.status, c.reason, c.message) for c in got}
    for ctype, expected in want.items():
        assert by_type[ctype] == expected
    assert all(c.observed_revision == findings.revision for c in got)
    assert all(c.last_transition_time == NOW for c in got)


def test_transition_time_kept_while_status_stays() -> None:
    first = summarize(Findings(SHA, planned=True), [], 100.0)
    previous: list[dict[str, JSON]] = [c.to_json() for c in first]
    same = summarize(Findings(SHA, planned=True, busy=["web 1 Progressing"]), previous, 200.0)
    times = {c.type: c.last_transition_time for c in same}
    # Reconciling flipped False -> True: new time; the other two kept theirs
    assert times == {"Stalled": 100.0, "Reconciling": 200.0, "Ready": 100.0}


def _state(name: str, phase: str, *, halt: Halt | None = None) -> dict[str, JSON]:
    batches = (Batch(("n1",), started_at=1.0, done_at=2.0), Batch(("n2",), started_at=3.0))
    s = RolloutState(name, "process", "1.1.0", "f", 0.0, batches, phase=phase, halt=halt)  # type: ignore[arg-type]
    return state_to_json(s)


def test_rollout_progress_lists_live_rollouts_only() -> None:
    rollouts = {
        "web": _state("web", "Soaking"),
        "api": _state("api", "Halted", halt=Halt("n2", "n2 failed", 5.0)),
        "gone": _state("gone", "Progressing"),
        "done": _state("done", "Succeeded"),
    }
    halted, busy = rollout_progress(rollouts, {"web", "api", "done"})
    assert halted == ["api 1.1.0: n2 failed"]
    assert busy == ["web 1.1.0 Soaking batch 2/2"]
