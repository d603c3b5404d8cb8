"""The pure half of the plan comment: what a node's change is called, the /v1/fleet parse,
table cells that cannot break the table."""

from __future__ import annotations

import pytest

from reconciler.commands.plan import rollouts
from reconciler.plan.select import inventory
from reconciler.views.plan_comment import cell, change, running_versions
from tests.helpers.fleet import fleet_files, nodes_named, release_doc, spec_of


@pytest.mark.parametrize(
    ("now", "after", "want"),
    [
        (None, "1.0.0", "new"),
        ("1.0.0", None, "removed"),
        ("1.0.0", "1.0.0", "unchanged"),
        ("1.0.0", "1.1.0", "upgrade"),
        ("1.10.0", "1.9.0", "downgrade"),  # semver, not string order
        ("1.0.0-rc.1", "1.0.0", "upgrade"),  # a prerelease sorts before its release
        ("1.0.0", "1.0.0-rc.1", "downgrade"),
    ],
)
def test_change(now: str | None, after: str | None, want: str) -> None:
    assert change(now, after) == want


def test_running_versions_reads_the_fleet_status_document() -> None:
    status = {
        "nodes": [
            {"node": "a", "workloads": [{"name": "w", "desired": "2", "running": "1.0.0"}]},
            {"node": "b", "workloads": [{"name": "w", "desired": "2", "running": None}]},
            {"node": "c", "workloads": []},
            {"bogus": True},
        ]
    }
    assert running_versions(status) == {"a": {"w": "1.0.0"}, "b": {"w": None}, "c": {}}
    assert running_versions({}) == {}


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("a|b", "a\\|b"),
        ("two\nlines", "two<br>lines"),
        ("<script>&", "&lt;script&gt;&amp;"),
        ("plain", "plain"),
    ],
)
def test_cell(text: str, want: str) -> None:
    assert cell(text) == want


WINDOW = {"days": ["Tue"], "start": "02:00", "duration": "4h", "timezone": "Europe/Berlin"}


@pytest.mark.parametrize(
    ("release_windows", "node_windows", "want"),
    [
        (None, None, "any time"),
        ([WINDOW], None, "Tue 02:00 +4h 0m Europe/Berlin"),
        ("ignore", [WINDOW], "ignore (emergency)"),
        (None, [WINDOW], "any time<br>n2: Tue 02:00 +4h 0m Europe/Berlin"),
    ],
)
def test_the_plan_names_each_rollouts_windows(
    release_windows: object, node_windows: object, want: str
) -> None:
    """A reviewer sees when the rollout may run: the release's windows, then the nodes
    whose own file decides (an emergency ``ignore`` overrides them)."""
    nodes = nodes_named("n1", "n2")
    if node_windows is not None:
        nodes[1]["windows"] = node_windows
    rel = release_doc("app", "1.0.0")
    if release_windows is not None:
        rel["rollout"]["windows"] = release_windows
    spec = spec_of(fleet_files(nodes, [rel]))
    (ro,) = rollouts(spec, inventory(spec))
    assert ro.windows == want
