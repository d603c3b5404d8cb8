"""Each forge's real webhook delivery against a real ``fleetkeeper serve``: the fetch happens
(or not), replays fetch nothing, and every answer is counted in ``/metrics``.

The payloads under ``tests/data/webhooks/`` are in each forge's published format; only their
commit ids are replaced by the ones the test just merged (as the forge would send them). The
server mirrors a ``file://`` repo and polls once an hour, so only a webhook makes it fetch.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.fleet import FleetRepo, release_doc
from tests.helpers.server import DEFAULT_FILES, RunningServer, running_server

DATA = Path(__file__).parent.parent / "data" / "webhooks"
SAMPLE_AFTER = "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
SAMPLE_BEFORE = "95790bf891e76fee5e1747ab589903a6a1f80f22"
LONG_POLL = 3600
QUIET = 1.0  # how long "nothing was fetched" is watched


@dataclass
class Forge:
    server: RunningServer
    repo: FleetRepo
    n: int = 0

    def merge(self) -> tuple[str, str]:
        """Merge one more release on the fleet repo; (before, after) of main."""
        before = self.repo.head()
        self.n += 1
        version = f"1.0.{self.n}"
        after = self.repo.change(
            {f"releases/agent/{version}.yaml": release_doc("agent", version, command=["bin/a"])},
            f"agent {version}",
        )
        return before, after

    def payload(self, name: str, before: str, after: str) -> bytes:
        raw = (DATA / name).read_bytes()
        return raw.replace(SAMPLE_AFTER.encode(), after.encode()).replace(
            SAMPLE_BEFORE.encode(), before.encode()
        )

    def post(self, provider: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        with httpx.Client(base_url=self.server.url, timeout=10) as c:
            return c.post(f"/hooks/{provider}", content=body, headers=headers)

    def revision(self) -> str | None:
        rev: str | None = self.server.fleet()["revision"]
        return rev

    def fetches(self) -> float:
        return self.metric("fleetkeeper_fetch_duration_seconds_count")

    def metric(self, name: str) -> float:
        with httpx.Client(base_url=self.server.url) as c:
            text = c.get("/metrics").text
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def wait_applied(self, sha: str) -> None:
        deadline = time.monotonic() + 15
        while self.revision() != sha:
            assert time.monotonic() < deadline, f"the webhook did not lead to a fetch of {sha}"
            time.sleep(0.05)

    def assert_not_fetched(self, applied: str, fetches: float) -> None:
        time.sleep(QUIET)
        assert self.revision() == applied
        assert self.fetches() == fetches


@pytest.fixture(scope="module")
def forge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forge]:
    tmp = tmp_path_factory.mktemp("forges")
    repo = FleetRepo.create(tmp / "fleet", DEFAULT_FILES)
    with running_server(
        tmp,
        repo=repo,
        repo_url=f"file://{repo.path}",
        extra_config={"pollIntervalSeconds": LONG_POLL},
    ) as server:
        f = Forge(server, repo)
        f.wait_applied(repo.head())
        yield f


def _hmac(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def gitlab_headers(secret: str, event: str) -> dict[str, str]:
    """What GitLab 17 sends (docs: user/project/integrations/webhooks, delivery headers)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": "GitLab/17.6.0",
        "X-Gitlab-Event": event,
        "X-Gitlab-Token": secret,
        "X-Gitlab-Instance": "https://gitlab.example.org",
        "X-Gitlab-Webhook-UUID": "f3b5a1c2-7d64-4e0b-9a8c-2b1d0e9f8a7b",
        "X-Gitlab-Event-UUID": str(uuid.uuid4()),
        "Idempotency-Key": str(uuid.uuid4()),
    }


@pytest.mark.parametrize(
    ("sample", "event"),
    [
        ("gitlab-push.json", "Push Hook"),
        ("gitlab-tag_push.json", "Tag Push Hook"),
        ("gitlab-merge_request-merged.json", "Merge Request Hook"),
    ],
)
def test_gitlab_events_that_move_refs_fetch_now(forge: Forge, sample: str, event: str) -> None:
    before, after = forge.merge()
    body = forge.payload(sample, before, after)
    r = forge.post("gitlab", body, gitlab_headers(forge.server.webhook_secret, event))
    assert r.status_code == 202 and r.json() == {"triggered": True}, r.text
    forge.wait_applied(after)


def test_gitlab_wrong_token_or_unmerged_request_fetches_nothing(forge: Forge) -> None:
    applied = forge.revision()
    assert applied is not None
    before, after = forge.merge()
    fetches = forge.fetches()
    push = forge.payload("gitlab-push.json", before, after)
    secret = forge.server.webhook_secret
    for token in ("", "not-the-secret", secret[:-1], secret + "x"):
        headers = gitlab_headers(secret, "Push Hook")
        headers["X-Gitlab-Token"] = token
        r = forge.post("gitlab", push, headers)
        assert r.status_code == 401, r.text
        assert "X-Gitlab-Token" in r.json()["message"]
    headers = gitlab_headers(secret, "Push Hook")
    del headers["X-Gitlab-Token"]
    assert forge.post("gitlab", push, headers).status_code == 401
    opened = forge.payload("gitlab-merge_request-opened.json", before, after)
    r = forge.post("gitlab", opened, gitlab_headers(secret, "Merge Request Hook"))
    assert r.status_code == 200
    assert r.json() == {"triggered": False, "reason": "merge request !4 open: nothing to fetch"}
    forge.assert_not_fetched(applied, fetches)
    # the same change announced by a push does fetch (the server was only waiting)
    r = forge.post("gitlab", push, gitlab_headers(secret, "Push Hook"))
    assert r.status_code == 202
    forge.wait_applied(after)


def gitea_headers(secret: str, signed: bytes, content_type: str) -> dict[str, str]:
    """What Gitea 1.22 sends (services/webhook/deliver.go); Forgejo adds X-Forgejo-*."""
    delivery = str(uuid.uuid4())
    sig = _hmac(secret, signed)
    return {
        "Content-Type": content_type,
        "User-Agent": "Go-http-client/1.1",
        "X-Gitea-Delivery": delivery,
        "X-Gitea-Event": "push",
        "X-Gitea-Event-Type": "push",
        "X-Gitea-Signature": sig,
        "X-Gogs-Delivery": delivery,
        "X-Gogs-Event": "push",
        "X-Gogs-Event-Type": "push",
        "X-Gogs-Signature": sig,
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), signed, "sha1").hexdigest(),
        "X-Hub-Signature-256": "sha256=" + sig,
        "X-GitHub-Delivery": delivery,
        "X-GitHub-Event": "push",
        "X-GitHub-Event-Type": "push",
    }


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_gitea_push_fetches_with_both_content_types(forge: Forge, content_type: str) -> None:
    before, after = forge.merge()
    payload = forge.payload("gitea-push.json", before, after)
    if content_type == "application/json":
        body = payload
    else:  # Gitea's form body: payload=<the JSON>, signed over the JSON, not the form
        body = urllib.parse.urlencode({"payload": payload.decode()}).encode()
    headers = gitea_headers(forge.server.webhook_secret, payload, content_type)
    r = forge.post("gitea", body, headers)
    assert r.status_code == 202, r.text
    forge.wait_applied(after)


def test_gitea_form_signed_over_the_form_body_is_refused(forge: Forge) -> None:
    applied = forge.revision()
    assert applied is not None
    before, after = forge.merge()
    fetches = forge.fetches()
    payload = forge.payload("gitea-push.json", before, after)
    form = urllib.parse.urlencode({"payload": payload.decode()}).encode()
    ctype = "application/x-www-form-urlencoded"
    headers = gitea_headers(forge.server.webhook_secret, form, ctype)  # wrong bytes signed
    r = forge.post("gitea", form, headers)
    assert r.status_code == 401 and "X-Gitea-Signature" in r.json()["message"]
    tampered = form.replace(b"agent", b"tnega", 1)
    good = gitea_headers(forge.server.webhook_secret, payload, ctype)
    assert forge.post("gitea", tampered, good).status_code == 401
    forge.assert_not_fetched(applied, fetches)


def github_headers(secret: str, body: bytes, event: str, content_type: str) -> dict[str, str]:
    """What GitHub sends (docs: webhook events and payloads, delivery headers)."""
    return {
        "Content-Type": content_type,
        "User-Agent": "GitHub-Hookshot/8f2a3c1",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-GitHub-Hook-ID": "481516234",
        "X-GitHub-Hook-Installation-Target-Type": "repository",
        "X-GitHub-Hook-Installation-Target-ID": "700100",
        "X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, "sha1").hexdigest(),
        "X-Hub-Signature-256": "sha256=" + _hmac(secret, body),
    }


@pytest.mark.parametrize("content_type", ["application/json", "application/x-www-form-urlencoded"])
def test_github_merged_pull_request_fetches_an_opened_one_does_not(
    forge: Forge, content_type: str
) -> None:
    def encode(payload: bytes) -> bytes:
        if content_type == "application/json":
            return payload
        return urllib.parse.urlencode({"payload": payload.decode()}).encode()  # GitHub signs this

    secret = forge.server.webhook_secret
    applied = forge.revision()
    assert applied is not None
    before, after = forge.merge()
    fetches = forge.fetches()
    opened = encode(forge.payload("github-pull_request-opened.json", before, after))
    r = forge.post("github", opened, github_headers(secret, opened, "pull_request", content_type))
    assert r.status_code == 200
    assert r.json() == {"triggered": False, "reason": "pull request #4 opened: nothing to fetch"}
    forge.assert_not_fetched(applied, fetches)
    merged = encode(forge.payload("github-pull_request-merged.json", before, after))
    r = forge.post("github", merged, github_headers(secret, merged, "pull_request", content_type))
    assert r.status_code == 202, r.text
    forge.wait_applied(after)


def bitbucket_headers(secret: str, body: bytes, event: str, *, cloud: bool) -> dict[str, str]:
    """Bitbucket Cloud's and Data Center's delivery headers (their event-payload docs)."""
    headers = {
        "Content-Type": "application/json",
        "X-Event-Key": event,
        "X-Hub-Signature": "sha256=" + _hmac(secret, body),
    }
    if cloud:
        headers |= {
            "User-Agent": "Bitbucket-Webhooks/2.0",
            "X-Request-UUID": str(uuid.uuid4()),
            "X-Hook-UUID": "{0d6e4b3a-0000-4000-8000-00000000e001}",
            "X-Attempt-Number": "1",
        }
    else:
        headers |= {"User-Agent": "Atlassian HttpClient 4.2.0", "X-Request-Id": str(uuid.uuid4())}
    return headers


@pytest.mark.parametrize(
    ("sample", "event", "cloud"),
    [
        ("bitbucket-cloud-repo-push.json", "repo:push", True),
        ("bitbucket-dc-repo-refs_changed.json", "repo:refs_changed", False),
    ],
)
def test_bitbucket_push_fetches_now(forge: Forge, sample: str, event: str, cloud: bool) -> None:
    before, after = forge.merge()
    body = forge.payload(sample, before, after)
    headers = bitbucket_headers(forge.server.webhook_secret, body, event, cloud=cloud)
    r = forge.post("bitbucket", body, headers)
    assert r.status_code == 202, r.text
    forge.wait_applied(after)


def test_replayed_deliveries_are_answered_200_without_fetching(forge: Forge) -> None:
    secret = forge.server.webhook_secret
    before, after = forge.merge()
    body = forge.payload("gitea-push.json", before, after)
    gitea = gitea_headers(secret, body, "application/json")
    assert forge.post("gitea", body, gitea).status_code == 202
    forge.wait_applied(after)

    # the fleet moves on; a captured delivery is sent again, as is and with a fresh id
    _, newer = forge.merge()
    fetches = forge.fetches()
    r = forge.post("gitea", body, gitea)
    assert r.status_code == 200
    assert r.json()["reason"] == f"replay: delivery {gitea['X-Gitea-Delivery']} was already handled"
    fresh_id = dict(gitea, **{"X-Gitea-Delivery": str(uuid.uuid4())})
    r = forge.post("gitea", body, fresh_id)
    assert r.status_code == 200 and r.json()["triggered"] is False
    assert r.json()["reason"] == "replay: the same signed body was already handled"
    forge.assert_not_fetched(after, fetches)

    # GitHub and GitLab ids are remembered the same way
    push = b'{"ref": "refs/heads/main", "after": "' + newer.encode() + b'"}'
    github = {
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + _hmac(secret, push),
        "Content-Type": "application/json",
    }
    assert forge.post("github", push, github).status_code == 202
    forge.wait_applied(newer)
    _, newest = forge.merge()
    fetches = forge.fetches()
    assert forge.post("github", push, github).status_code == 200
    gl = forge.payload("gitlab-push.json", after, newer)
    gl_headers = gitlab_headers(secret, "Push Hook")
    assert forge.post("gitlab", gl, gl_headers).status_code == 202
    forge.wait_applied(newest)
    forge.merge()
    fetches = forge.fetches()
    r = forge.post("gitlab", gl, gl_headers)  # GitLab's retry: same Idempotency-Key and body
    assert r.status_code == 200 and r.json()["triggered"] is False
    forge.assert_not_fetched(newest, fetches)
    replays = 'fleetkeeper_webhook_deliveries_total{{provider="{}",result="replay"}}'
    assert forge.metric(replays.format("gitea")) == 2
    assert forge.metric(replays.format("gitlab")) == 1


def _generic(secret: str, body: bytes, stamp: int, delivery: str) -> dict[str, str]:
    signed = str(stamp).encode() + b"." + body
    return {
        "X-Fleetkeeper-Timestamp": str(stamp),
        "X-Fleetkeeper-Delivery": delivery,
        "X-Fleetkeeper-Signature": "sha256=" + _hmac(secret, signed),
    }


def test_generic_timestamp_is_signed_and_old_deliveries_are_refused(forge: Forge) -> None:
    secret = forge.server.webhook_secret
    applied = forge.revision()
    assert applied is not None
    _, after = forge.merge()
    fetches = forge.fetches()
    body = b'{"reason": "ci finished"}'
    now = int(time.time())
    old = _generic(secret, body, now - 301, str(uuid.uuid4()))
    r = forge.post("generic", body, old)
    assert r.status_code == 401
    assert r.json()["message"].startswith("X-Fleetkeeper-Timestamp is 30")  # 301 s or a bit more
    assert "s old by the reconciler's clock" in r.json()["message"]
    # a fresh timestamp under the old signature: the timestamp is covered by the HMAC
    moved = dict(old, **{"X-Fleetkeeper-Timestamp": str(now)})
    assert forge.post("generic", body, moved).status_code == 401
    future = _generic(secret, body, now + 3600, str(uuid.uuid4()))
    r = forge.post("generic", body, future)
    assert r.status_code == 401 and "in the future" in r.json()["message"]
    forge.assert_not_fetched(applied, fetches)
    assert forge.post("generic", body, _generic(secret, body, now, "ci-1")).status_code == 202
    forge.wait_applied(after)
    assert (
        forge.metric(
            'fleetkeeper_webhook_deliveries_total{provider="generic",result="unauthorized"}'
        )
        == 3
    )


def test_fetch_duration_and_failures_are_measured(tmp_path: Path) -> None:
    repo = FleetRepo.create(tmp_path / "fleet", DEFAULT_FILES)
    with running_server(
        tmp_path,
        repo=repo,
        repo_url=f"file://{repo.path}",
        extra_config={"pollIntervalSeconds": LONG_POLL},
    ) as server:
        f = Forge(server, repo)
        ok_before = f.fetches()
        assert ok_before >= 1  # the first pass fetched
        assert f.metric("fleetkeeper_fetch_failures_total") == 0
        moved = repo.path.rename(tmp_path / "gone")  # the remote is unreachable now
        body = b"{}"
        sig = "sha256=" + _hmac(server.webhook_secret, body)
        r = f.post("generic", body, {"X-Fleetkeeper-Signature": sig})
        assert r.status_code == 202
        deadline = time.monotonic() + 10
        while f.metric("fleetkeeper_fetch_failures_total") < 1:
            assert time.monotonic() < deadline, "the failed fetch was not counted"
            time.sleep(0.05)
        assert f.fetches() > ok_before  # failed fetches are timed too
        moved.rename(repo.path)
        _, after = f.merge()
        body = b'{"again": true}'
        sig = "sha256=" + _hmac(server.webhook_secret, body)
        assert f.post("generic", body, {"X-Fleetkeeper-Signature": sig}).status_code == 202
        f.wait_applied(after)
