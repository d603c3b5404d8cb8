"""Validation of the rollout controls: each mistake at its path:line:column."""

from __future__ import annotations

from tests.helpers.fleetfiles import FLEET, basic_fleet, lines, node, release, run

WINDOW = """\
rollout:
  windows:
    - days: [Tue, Thu]
      start: "02:00"
      duration: {duration}
      timezone: {tz}
"""


def test_good_controls_pass() -> None:
    files = basic_fleet()
    files["releases/infer/1.0.0.yaml"] = release(
        tail=WINDOW.format(duration="4h", tz="Europe/Berlin")
        + "  maxUnavailable: 10%\n  spreadSeconds: 300\n"
    )
    files["nodes/gpu-1.yaml"] = node("gpu-1") + 'hold: {until: "2026-12-24"}\n'
    files["nodes/gpu-2.yaml"] = node("gpu-2") + "hold: true\n"
    files["fleet.yaml"] = FLEET + "defaults:\n  rollout:\n    windows: ignore\n"
    assert lines(run(files)) == []


def test_unknown_time_zone_names_the_line() -> None:
    files = basic_fleet()
    files["releases/infer/1.0.0.yaml"] = release(
        tail=WINDOW.format(duration="4h", tz="Europe/Berlim")
    )
    assert lines(run(files)) == [
        "releases/infer/1.0.0.yaml:19:17: unknown time zone 'Europe/Berlim': use an IANA "
        "name such as Europe/Berlin, America/New_York or UTC"
    ]


def test_node_and_default_windows_are_checked_too() -> None:
    files = basic_fleet()
    files["nodes/gpu-1.yaml"] = node("gpu-1") + (
        'windows:\n  - {days: [Sat], start: "01:00", duration: 200h, timezone: UTC}\n'
    )
    files["fleet.yaml"] = FLEET + (
        "defaults:\n  rollout:\n    windows:\n"
        '      - {days: [Sun], start: "03:00", duration: 1h, timezone: Berlin}\n'
    )
    assert lines(run(files)) == [
        "fleet.yaml:7:63: unknown time zone 'Berlin': use an IANA name such as "
        "Europe/Berlin, America/New_York or UTC",
        "nodes/gpu-1.yaml:9:45: window duration 200h is longer than a week: a weekly window "
        "would always be open; leave windows out instead",
    ]


def test_bad_shapes_are_schema_errors() -> None:
    files = basic_fleet()
    files["releases/infer/1.0.0.yaml"] = release(
        tail=WINDOW.format(duration="soon", tz="UTC") + "  maxUnavailable: 150%\n"
    )
    files["nodes/gpu-1.yaml"] = node("gpu-1") + 'hold: {until: "2026-13-45"}\n'
    got = lines(run(files))
    assert any(g.startswith("releases/infer/1.0.0.yaml:18:") and "soon" in g for g in got), got
    assert any(g.startswith("releases/infer/1.0.0.yaml:20:") and "150%" in g for g in got), got
    assert "nodes/gpu-1.yaml:8:15: hold.until '2026-13-45' is not a date (YYYY-MM-DD)" in got


def test_an_unquoted_hold_date_reads_as_the_date() -> None:
    files = basic_fleet()
    files["nodes/gpu-1.yaml"] = node("gpu-1") + "hold: {until: 2026-12-24}\n"
    assert lines(run(files)) == []
    files["nodes/gpu-1.yaml"] = node("gpu-1") + "hold: {until: 2026-12-24 10:00}\n"
    assert lines(run(files)) == [
        "nodes/gpu-1.yaml:8:15: hold.until: '2026-12-24 10:00' is not a date, YYYY-MM-DD"
    ]
