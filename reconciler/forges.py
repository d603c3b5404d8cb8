"""What a forge's webhook delivery says, judged without I/O: authentic? which event? seen before?

``read_delivery(provider, headers, body, secret, now)`` returns a ``Delivery`` (authentic,
with the forge's event, its delivery id and whether the event can move a ref) or a
``Refusal`` (HTTP status and a message naming the header or field that was wrong).

Each forge proves a delivery differently (event header; delivery id):

- `github`: `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body>` (JSON or form);
  `X-GitHub-Event`; `X-GitHub-Delivery`.
- `gitea` (and Forgejo): `X-Gitea-Signature` (or `X-Forgejo-Signature`): the hex HMAC of
  the JSON payload, which with the form content type is the `payload` field, not the body;
  `X-Gitea-Event`; `X-Gitea-Delivery`.
- `gitlab`: `X-Gitlab-Token: <the secret itself>`, compared in constant time;
  `X-Gitlab-Event`; `Idempotency-Key` (same across GitLab's retries), else
  `X-Gitlab-Event-UUID`.
- `bitbucket` (Cloud and Data Center): `X-Hub-Signature: sha256=<HMAC of the raw body>`;
  `X-Event-Key`; `X-Request-UUID` (Cloud) or `X-Request-Id` (Data Center).
- `generic`: `X-Fleetkeeper-Signature: sha256=<HMAC>` of the body, or of
  `<X-Fleetkeeper-Timestamp>.<body>` when a timestamp (Unix seconds) is sent, which must
  then be within ``MAX_AGE_SECONDS`` of the reconciler's clock; `X-Fleetkeeper-Delivery`.

Replays: ``DeliveryLog`` remembers, for a while and in bounded memory, the delivery ids and
the digests of the signed bytes it has accepted. Delivery ids are not covered by any forge's
signature, so the digest is what stops a captured request resent with a fresh id; the
generic provider's signed timestamp bounds how long a capture stays usable at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Provider = Literal["github", "gitea", "gitlab", "bitbucket", "generic"]
PROVIDERS: tuple[Provider, ...] = ("github", "gitea", "gitlab", "bitbucket", "generic")

MAX_AGE_SECONDS = 300  # a timestamped delivery older (or further ahead) than this is refused
REMEMBER_SECONDS = 3600  # how long a delivery id or digest is remembered
REMEMBER_MAX = 10_000  # at most this many remembered; the oldest go first
FORM = "application/x-www-form-urlencoded"

# Events that can move a branch or a tag: the others are acknowledged and fetch nothing.
_FETCH_EVENTS: dict[Provider, frozenset[str]] = {
    "github": frozenset({"push", "create", "delete", "pull_request"}),
    "gitea": frozenset({"push", "create", "delete", "pull_request"}),
    "gitlab": frozenset({"Push Hook", "Tag Push Hook", "Merge Request Hook", "System Hook"}),
    "bitbucket": frozenset(
        {"repo:push", "pullrequest:fulfilled", "repo:refs_changed", "pr:merged"}
    ),
    "generic": frozenset(),
}
_PING_EVENTS = frozenset({"ping", "diagnostics:ping"})
# Lower-case header names, the first present wins.
_EVENT_HEADERS: dict[Provider, tuple[str, ...]] = {
    "github": ("x-github-event",),
    "gitea": ("x-gitea-event", "x-forgejo-event"),
    "gitlab": ("x-gitlab-event",),
    "bitbucket": ("x-event-key",),
    "generic": (),
}
_ID_HEADERS: dict[Provider, tuple[str, ...]] = {
    "github": ("x-github-delivery",),
    "gitea": ("x-gitea-delivery", "x-forgejo-delivery"),
    # Idempotency-Key (GitLab 17.4+) stays the same across GitLab's own retries
    "gitlab": ("idempotency-key", "x-gitlab-event-uuid"),
    "bitbucket": ("x-request-uuid", "x-request-id"),  # Cloud, Data Center
    "generic": ("x-fleetkeeper-delivery",),
}


@dataclass(frozen=True)
class Delivery:
    provider: Provider
    event: str | None  # the forge's event name (None: the sender gave none)
    delivery_id: str | None
    digest: str  # SHA-256 of the signed bytes (what a replay repeats)
    fetch: bool  # can this event have moved a ref?
    why: str  # for people: "push to refs/heads/main", "merge request !4 opened: nothing to fetch"


@dataclass(frozen=True)
class Refusal:
    status: int  # 400 malformed, 401 not authentic or too old
    message: str


def sign(secret: str, data: bytes) -> str:
    """Hex HMAC-SHA256 of ``data`` (what a forge sends, minus its prefix)."""
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def _check_hmac(secret: str, data: bytes, header: str | None, prefix: str) -> bool:
    if not header or not header.startswith(prefix):
        return False
    return hmac.compare_digest(sign(secret, data).encode(), header[len(prefix) :].encode())


def _first(headers: Mapping[str, str], *names: str) -> tuple[str, str | None]:
    """The first of ``names`` present (lower-case keys), and its value."""
    for name in names:
        if name in headers:
            return name, headers[name]
    return names[0], None


def _form_payload(body: bytes) -> bytes | None:
    """The ``payload`` field of a form body (GitHub's and Gitea's form content type)."""
    try:
        fields = urllib.parse.parse_qs(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=20,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("payload")
    return values[0].encode() if values and len(values) == 1 else None


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _field(doc: object, *path: str) -> object:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _judge_event(provider: Provider, event: str | None, doc: object) -> tuple[bool, str]:
    """(can it move a ref, why) from the event name and the payload."""
    if provider == "generic" or event is None:
        return True, "signed delivery"
    if event in _PING_EVENTS:
        return False, f"{event}: nothing to fetch"
    if event not in _FETCH_EVENTS[provider]:
        return False, f"event {event!r} does not move a branch or tag: nothing to fetch"
    if provider in ("github", "gitea") and event == "pull_request":
        merged = _field(doc, "action") == "closed" and _field(doc, "pull_request", "merged") is True
        number = _field(doc, "number")
        if not merged:
            return False, f"pull request #{number} {_field(doc, 'action')}: nothing to fetch"
        return True, f"pull request #{number} merged"
    if provider == "gitlab":
        kind = _field(doc, "object_kind")
        if event == "System Hook":  # instance-wide hooks name the event in event_name
            kind = _field(doc, "event_name") or kind
        if kind == "merge_request":
            action = _field(doc, "object_attributes", "action")
            iid = _field(doc, "object_attributes", "iid")
            if action != "merge":
                return False, f"merge request !{iid} {action}: nothing to fetch"
            return True, f"merge request !{iid} merged"
        if kind not in ("push", "tag_push", "repository_update"):
            return False, f"{event} {kind}: nothing to fetch"
    ref = _field(doc, "ref")
    return True, f"{event} {ref}" if isinstance(ref, str) else event


def read_delivery(
    provider: Provider,
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    now: float,
    max_age: float = MAX_AGE_SECONDS,
) -> Delivery | Refusal:
    """Judge one delivery; ``headers`` has lower-case names (as Starlette gives them)."""
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    signed = body  # the bytes the proof covers (and a replay repeats)
    payload = body  # the JSON document describing the event
    if provider == "github":
        name, proof = "x-hub-signature-256", headers.get("x-hub-signature-256")
        ok = _check_hmac(secret, body, proof, "sha256=")
        if ok and content_type == FORM:
            payload = _form_payload(body) or b""
        expected = "sha256=<HMAC-SHA256 of the body>"
    elif provider == "gitea":
        name, proof = _first(headers, "x-gitea-signature", "x-forgejo-signature")
        if content_type == FORM:
            # Gitea signs the JSON it puts in the form's `payload` field, not the form body
            form = _form_payload(body)
            if form is None:
                return Refusal(400, "form body without exactly one `payload` field")
            signed = payload = form
        ok = _check_hmac(secret, signed, proof, "")
        expected = "<HMAC-SHA256 of the JSON payload>"
    elif provider == "gitlab":
        name, proof = "x-gitlab-token", headers.get("x-gitlab-token")
        # digests first: compare_digest on unequal lengths would tell the secret's length
        ok = proof is not None and hmac.compare_digest(
            hashlib.sha256(proof.encode()).digest(), hashlib.sha256(secret.encode()).digest()
        )
        expected = "the webhook secret (GitLab's secret token)"
    elif provider == "bitbucket":
        name, proof = "x-hub-signature", headers.get("x-hub-signature")
        ok = _check_hmac(secret, body, proof, "sha256=")
        expected = "sha256=<HMAC-SHA256 of the body>"
    else:
        name, proof = "x-fleetkeeper-signature", headers.get("x-fleetkeeper-signature")
        stamp = headers.get("x-fleetkeeper-timestamp")
        if stamp is not None:
            signed = stamp.encode() + b"." + body
        ok = _check_hmac(secret, signed, proof, "sha256=")
        expected = "sha256=<HMAC-SHA256 of '<X-Fleetkeeper-Timestamp>.' + body, or of the body>"
        if ok and stamp is not None:
            try:
                age = now - int(stamp)
            except ValueError:
                return Refusal(400, f"X-Fleetkeeper-Timestamp {stamp!r}: expected Unix seconds")
            if abs(age) > max_age:
                off = f"{age:.0f}s old" if age > 0 else f"{-age:.0f}s in the future"
                return Refusal(
                    401,
                    f"X-Fleetkeeper-Timestamp is {off} by the reconciler's clock; deliveries "
                    f"more than {max_age:.0f}s off are refused (replay protection)",
                )
    if not ok:
        return Refusal(401, f"bad or missing {_title(name)} header: expected {expected}")

    event = _first(headers, *_EVENT_HEADERS[provider])[1] if _EVENT_HEADERS[provider] else None
    delivery_id = _first(headers, *_ID_HEADERS[provider])[1]
    doc = _json(payload) if provider != "generic" else None
    fetch, why = _judge_event(provider, event, doc)
    return Delivery(
        provider=provider,
        event=event,
        delivery_id=delivery_id,
        digest=hashlib.sha256(provider.encode() + b"\0" + signed).hexdigest(),
        fetch=fetch,
        why=why,
    )


def _title(header: str) -> str:
    return "-".join(p.capitalize() for p in header.split("-")).replace("Github", "GitHub")


class DeliveryLog:
    """Delivery ids and digests seen recently: an LRU bounded in size and age.

    Not thread-safe: the API calls it from its event loop only.
    """

    def __init__(self, ttl: float = REMEMBER_SECONDS, limit: int = REMEMBER_MAX) -> None:
        self.ttl = ttl
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def replay_of(self, delivery: Delivery, now: float) -> str | None:
        """Why ``delivery`` repeats one accepted before (None: it is new); remembers it."""
        self._expire(now)
        keys = [f"digest:{delivery.digest}"]
        if delivery.delivery_id:
            keys.append(f"id:{delivery.provider}:{delivery.delivery_id}")
        why: str | None = None
        if keys[-1] in self._seen and delivery.delivery_id:
            why = f"delivery {delivery.delivery_id} was already handled"
        elif keys[0] in self._seen:
            why = "the same signed body was already handled"
        for key in keys:
            self._seen[key] = now
            self._seen.move_to_end(key)
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return why

    def _expire(self, now: float) -> None:
        while self._seen:
            key, when = next(iter(self._seen.items()))
            if now - when <= self.ttl:
                return
            del self._seen[key]
