"""Rules for the rollout controls: maintenance windows, holds, drain (docs/rollouts.md).

The schema checks the shapes; these check what a pattern cannot: that a time zone is
one this machine's IANA database knows (a typo would make a window that never opens),
that a window lasts at most a week, that a hold date is a real date, and that a drain
names one way to ask (http or file).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import date

from reconciler.plan.windows import known_zone
from reconciler.spec import Deployable, parse_duration_minutes
from reconciler.validate.loader import LoadedFile
from reconciler.validate.rules import FileRule, JsonPath, Rule, RuleContext, Scope, violation
from reconciler.validate.violations import Violation

WEEK_MINUTES = 7 * 24 * 60


def _window_places(doc: dict[str, object]) -> Iterator[tuple[JsonPath, object]]:
    """Where a file may hold a ``windows`` list, and the value there."""
    kind = doc.get("kind")
    if kind == "Node":
        yield ("windows",), doc.get("windows")
    elif kind in ("Release", "Model"):
        rollout = doc.get("rollout")
        if isinstance(rollout, dict):
            yield ("rollout", "windows"), rollout.get("windows")
    elif kind == "Fleet":
        defaults = doc.get("defaults")
        rollout = defaults.get("rollout") if isinstance(defaults, dict) else None
        if isinstance(rollout, dict):
            yield ("defaults", "rollout", "windows"), rollout.get("windows")


def controls(ctx: RuleContext) -> Iterable[Violation]:
    """Windows with known time zones and at most a week long; hold dates that exist."""
    return ctx.each_file(controls_of)


def controls_of(scope: Scope, loaded: LoadedFile, d: Deployable | None) -> Iterator[Violation]:
    doc = loaded.value
    for at, value in _window_places(doc):
        for i, w in enumerate(value if isinstance(value, list) else []):
            if not isinstance(w, dict):
                continue
            tz = w.get("timezone")
            if isinstance(tz, str) and not known_zone(tz):
                yield violation(
                    loaded,
                    loaded.path,
                    (*at, i, "timezone"),
                    f"unknown time zone {tz!r}: use an IANA name such as Europe/Berlin, "
                    "America/New_York or UTC",
                )
            minutes = parse_duration_minutes(str(w.get("duration", "")))
            if minutes is not None and minutes > WEEK_MINUTES:
                yield violation(
                    loaded,
                    loaded.path,
                    (*at, i, "duration"),
                    f"window duration {w.get('duration')} is longer than a week: a weekly "
                    "window would always be open; leave windows out instead",
                )
    drain = doc.get("drain") if doc.get("kind") in ("Release", "Model") else None
    if isinstance(drain, dict) and ("http" in drain) == ("file" in drain):
        given = "both http and file" if "http" in drain else "neither http nor file"
        yield violation(
            loaded,
            loaded.path,
            ("drain",),
            f"drain gives {given}: give one, drain: {{http: URL}} (the agent POSTs it until "
            "it answers 200) or drain: {file: PATH} (an update lock the workload removes "
            "when idle)",
        )
    hold = doc.get("hold") if doc.get("kind") == "Node" else None
    if isinstance(hold, dict) and isinstance(hold.get("until"), str):
        try:
            date.fromisoformat(hold["until"])
        except ValueError:
            yield violation(
                loaded,
                loaded.path,
                ("hold", "until"),
                f"hold.until {hold['until']!r} is not a date (YYYY-MM-DD)",
            )


RULES: list[Rule] = [controls]

PER_FILE: dict[Rule, FileRule] = {controls: controls_of}
