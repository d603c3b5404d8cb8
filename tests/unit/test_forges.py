"""The pure webhook judge: which events fetch, which proofs hold, how replays are remembered."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from reconciler.forges import Delivery, DeliveryLog, Provider, Refusal, read_delivery

SECRET = "s3cret"
NOW = 1_800_000_000.0


def _sig(data: bytes) -> str:
    return hmac.new(SECRET.encode(), data, hashlib.sha256).hexdigest()


def _headers(provider: Provider, event: str | None, body: bytes) -> dict[str, str]:
    proof = {
        "github": {"x-hub-signature-256": "sha256=" + _sig(body), "x-github-event": event},
        "gitea": {"x-forgejo-signature": _sig(body), "x-forgejo-event": event},
        "gitlab": {"x-gitlab-token": SECRET, "x-gitlab-event": event},
        "bitbucket": {"x-hub-signature": "sha256=" + _sig(body), "x-event-key": event},
        "generic": {"x-fleetkeeper-signature": "sha256=" + _sig(body)},
    }[provider]
    return {k: v for k, v in proof.items() if v is not None}


# (provider, event header, payload, want fetch, want reason)
EVENTS: list[tuple[Provider, str | None, dict[str, object], bool, str]] = [
    ("github", "push", {"ref": "refs/heads/main"}, True, "push refs/heads/main"),
    ("github", "ping", {"zen": "Keep it logically awesome."}, False, "ping: nothing to fetch"),
    (
        "github",
        "pull_request",
        {"action": "opened", "number": 7, "pull_request": {"merged": False}},
        False,
        "pull request #7 opened: nothing to fetch",
    ),
    (
        "github",
        "pull_request",
        {"action": "closed", "number": 7, "pull_request": {"merged": True}},
        True,
        "pull request #7 merged",
    ),
    (
        "github",
        "pull_request",
        {"action": "closed", "number": 8, "pull_request": {"merged": False}},
        False,
        "pull request #8 closed: nothing to fetch",
    ),
    ("github", "issues", {"action": "opened"}, False, "event 'issues' does not move"),
    ("github", None, {"ref": "refs/heads/main"}, True, "signed delivery"),
    ("gitea", "push", {"ref": "refs/heads/main"}, True, "push refs/heads/main"),
    ("gitlab", "System Hook", {"event_name": "push", "ref": "refs/heads/main"}, True, "System"),
    ("gitlab", "System Hook", {"event_name": "repository_update"}, True, "System Hook"),
    ("gitlab", "System Hook", {"event_name": "user_create"}, False, "user_create: nothing"),
    (
        "gitlab",
        "System Hook",
        {"object_kind": "merge_request", "object_attributes": {"iid": 9, "action": "merge"}},
        True,
        "merge request !9 merged",
    ),
    (
        "gitlab",
        "Merge Request Hook",
        {"object_kind": "merge_request", "object_attributes": {"iid": 3, "action": "close"}},
        False,
        "merge request !3 close: nothing to fetch",
    ),
    ("gitlab", "Pipeline Hook", {"object_kind": "pipeline"}, False, "does not move"),
    ("bitbucket", "pr:merged", {"eventKey": "pr:merged"}, True, "pr:merged"),
    ("bitbucket", "pullrequest:fulfilled", {}, True, "pullrequest:fulfilled"),
    ("bitbucket", "diagnostics:ping", {}, False, "diagnostics:ping: nothing to fetch"),
    ("bitbucket", "pullrequest:created", {}, False, "does not move"),
    ("generic", None, {"anything": 1}, True, "signed delivery"),
]


@pytest.mark.parametrize(("provider", "event", "payload", "fetch", "why"), EVENTS)
def test_events_that_move_refs_fetch(
    provider: Provider, event: str | None, payload: dict[str, object], fetch: bool, why: str
) -> None:
    body = json.dumps(payload).encode()
    got = read_delivery(provider, _headers(provider, event, body), body, SECRET, NOW)
    assert isinstance(got, Delivery), got
    assert got.fetch is fetch
    assert why in got.why


def test_gitea_form_body_is_checked_against_its_payload_field() -> None:
    payload = b'{"ref":"refs/heads/main"}'
    form = b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%7D"
    headers = {"content-type": "application/x-www-form-urlencoded", "x-gitea-event": "push"}
    ok = read_delivery("gitea", headers | {"x-gitea-signature": _sig(payload)}, form, SECRET, NOW)
    assert isinstance(ok, Delivery) and ok.fetch
    bad = read_delivery("gitea", headers | {"x-gitea-signature": _sig(form)}, form, SECRET, NOW)
    assert isinstance(bad, Refusal) and bad.status == 401
    twice = form + b"&payload=%7B%7D"
    got = read_delivery("gitea", headers | {"x-gitea-signature": _sig(payload)}, twice, SECRET, NOW)
    assert got == Refusal(400, "form body without exactly one `payload` field")


def test_generic_timestamp_must_be_a_number() -> None:
    body = b"{}"
    headers = {
        "x-fleetkeeper-timestamp": "yesterday",
        "x-fleetkeeper-signature": "sha256=" + _sig(b"yesterday." + body),
    }
    got = read_delivery("generic", headers, body, SECRET, NOW)
    assert got == Refusal(400, "X-Fleetkeeper-Timestamp 'yesterday': expected Unix seconds")


def _delivery(n: int, delivery_id: str | None = None) -> Delivery:
    return Delivery("github", "push", delivery_id, f"digest-{n}", True, "push")


def test_delivery_log_is_bounded_in_size_and_age() -> None:
    log = DeliveryLog(ttl=60, limit=4)
    assert log.replay_of(_delivery(1, "a"), NOW) is None
    assert log.replay_of(_delivery(1, "a"), NOW + 1) == "delivery a was already handled"
    assert log.replay_of(_delivery(1, "b"), NOW + 2) == "the same signed body was already handled"
    for n in range(2, 10):
        assert log.replay_of(_delivery(n, f"id-{n}"), NOW + 3) is None
    assert len(log) == 4  # the oldest went first
    assert log.replay_of(_delivery(1, "a"), NOW + 4) is None  # forgotten: evicted
    assert log.replay_of(_delivery(9, "id-9"), NOW + 4) is not None
    assert log.replay_of(_delivery(9, "id-9"), NOW + 4 + 61) is None  # forgotten: too old
