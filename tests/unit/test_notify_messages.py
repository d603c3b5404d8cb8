"""Notifications: which audit events they come from, what each receiver type gets, and the
``notifications:`` config with its errors."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from reconciler.config import Receiver, parse_config
from reconciler.errors import ConfigError
from reconciler.notify.messages import notification_for, render
from reconciler.store.base import AuditEvent

NOW = 1_800_000_000.0


def _event(kind: str) -> AuditEvent:
    return AuditEvent(
        time=NOW - 1,
        kind=kind,
        message=f"app 1.2.0 {kind}: node gpu-1 failed",
        revision="c" * 40,
        release="app",
        node="gpu-1",
    )


@pytest.mark.parametrize(
    ("kind", "event"),
    [
        ("halted", "halted"),
        ("rolled-back", "halted"),
        ("stale", "stale"),
        ("succeeded", "succeeded"),
        ("refused", "refused"),
        ("unapproved", "refused"),
        ("invalid", "refused"),
        ("rollback", "refused"),
        ("mismatch", "refused"),  # a signed tag placed at another ref name (tag mode)
        ("failover", "failover"),
        ("registration-refused", None),  # registrations are not revisions
        ("backpressure", None),  # maxUnavailable: the rollout waits, it has not halted
        ("batch-started", None),
        ("applied", None),
        ("fresh", None),
    ],
)
def test_audit_kinds_map_to_events(kind: str, event: str | None) -> None:
    n = notification_for(_event(kind), "id-1")
    assert (n.event if n else None) == event


def test_each_receiver_type_gets_its_format() -> None:
    n = notification_for(_event("halted"), "id-1")
    assert n is not None
    hook = render(Receiver("h", "webhook", "https://h.example/x", secret="k"), n, NOW)
    doc = json.loads(hook.body)
    assert doc["id"] == "id-1" and doc["event"] == "halted" and doc["node"] == "gpu-1"
    signed = b"1800000000." + hook.body
    want = "sha256=" + hmac.new(b"k", signed, hashlib.sha256).hexdigest()
    assert hook.headers["X-Fleetkeeper-Signature"] == want
    assert hook.headers["X-Fleetkeeper-Delivery"] == "id-1"
    slack = render(Receiver("s", "slack", "https://chat.example/hooks/x"), n, NOW)
    assert json.loads(slack.body) == {
        "text": "fleetkeeper halted: app 1.2.0 halted: node gpu-1 failed (revision cccccccccccc)"
    }
    ntfy = render(Receiver("n", "ntfy", "https://ntfy.example/fleet", token="tk"), n, NOW)
    assert ntfy.body == b"app 1.2.0 halted: node gpu-1 failed"
    assert ntfy.headers["Title"] == "fleetkeeper: halted"
    assert ntfy.headers["Priority"] == "high"
    assert ntfy.headers["Authorization"] == "Bearer tk"


def _parse(tmp_path: Path, notifications: object) -> tuple[Receiver, ...]:
    doc = {"repo": str(tmp_path), "notifications": notifications}
    return parse_config(doc, base=tmp_path, env={}).notifications


def test_notifications_config(tmp_path: Path) -> None:
    (tmp_path / "slack.url").write_text("https://chat.example/hooks/T/B/s3cret\n")
    (tmp_path / "key").write_text("k\n")
    got = _parse(
        tmp_path,
        [
            {"name": "chat", "type": "slack", "urlFile": "slack.url", "events": ["halted"]},
            {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/x", "secretFile": "key"},
        ],
    )
    assert got[0].url == "https://chat.example/hooks/T/B/s3cret"
    assert got[0].events == frozenset({"halted"})
    assert "s3cret" not in repr(got[0])  # the URL is a secret: never in logs
    assert got[1].secret == "k" and len(got[1].events) == 5
    assert (got[1].attempts, got[1].backoff, got[1].timeout) == (5, 2.0, 10.0)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a", "type": "webhook", "url": "http://h/x"}], "needs secretFile"),
        (
            [
                {"name": "a", "type": "slack", "url": "http://h/x"},
                {"name": "a", "type": "ntfy", "url": "http://h/y"},
            ],
            "notifications[1].name: 'a' is used by an earlier receiver",
        ),
        ([{"name": "a", "type": "slack", "urlFile": "missing"}], "notifications[0].urlFile"),
        ([{"name": "a", "type": "slack", "url": "http://h", "events": ["paged"]}], "'paged'"),
        ([{"name": "a", "type": "irc", "url": "http://h"}], "'irc'"),
        ([{"name": "a", "type": "slack"}], "notifications"),
    ],
)
def test_notifications_config_errors(tmp_path: Path, entries: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(tmp_path, entries)
    assert message in str(err.value)
