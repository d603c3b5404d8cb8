"""Which audit events are notifications, and the HTTP request each receiver type expects.

Pure: the time and the notification's id are arguments.

| event       | audit kinds                                         |
|-------------|-----------------------------------------------------|
| `halted`    | `halted`, `rolled-back`                             |
| `stale`     | `stale`                                             |
| `succeeded` | `succeeded`                                         |
| `refused`   | `refused`, `unapproved`, `invalid`, `rejected`,     |
|             | `rollback` (history moved backwards), `mismatch`    |
|             | (a signed tag placed at another ref name)           |
| `failover`  | `failover` (a replica took over the reconcile loop) |

Receiver types:

- `webhook`: a JSON object (below) signed like the generic inbound webhook:
  ``X-Fleetkeeper-Signature: sha256=<HMAC-SHA256 of "<X-Fleetkeeper-Timestamp>." + body>``,
  with ``X-Fleetkeeper-Event`` and ``X-Fleetkeeper-Delivery`` (the same on every retry).
- `slack`: ``{"text": ...}``, what Slack's incoming webhooks and the many chat servers that
  copy them (Mattermost, Rocket.Chat, Discord's ``/slack`` endpoint) accept.
- `ntfy`: the message as the body of a POST to the topic URL, ``Title``/``Priority``/``Tags``
  headers as ntfy documents them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.config import NotificationEvent, Receiver
from reconciler.store.base import AuditEvent

AUDIT_KINDS: Mapping[str, NotificationEvent] = {
    "halted": "halted",
    "rolled-back": "halted",
    "stale": "stale",
    "succeeded": "succeeded",
    "refused": "refused",
    "unapproved": "refused",
    "invalid": "refused",
    "rejected": "refused",
    "rollback": "refused",
    "mismatch": "refused",
    "failover": "failover",
}
_NTFY_PRIORITY: Mapping[NotificationEvent, str] = {
    "halted": "high",
    "refused": "high",
    "stale": "default",
    "failover": "default",
    "succeeded": "low",
}
_NTFY_TAGS: Mapping[NotificationEvent, str] = {
    "halted": "rotating_light",
    "refused": "no_entry",
    "stale": "warning",
    "failover": "arrows_counterclockwise",
    "succeeded": "white_check_mark",
}


@dataclass(frozen=True)
class Notification:
    id: str  # stable across retries: receivers can deduplicate on it
    event: NotificationEvent
    kind: str  # the audit kind it comes from
    message: str
    time: float
    release: str | None = None
    node: str | None = None
    revision: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "event": self.event,
            "kind": self.kind,
            "message": self.message,
            "time": self.time,
            "release": self.release,
            "node": self.node,
            "revision": self.revision,
        }


@dataclass(frozen=True)
class Outgoing:
    url: str
    body: bytes
    headers: dict[str, str]


def notification_for(event: AuditEvent, notification_id: str) -> Notification | None:
    """The notification an audit event makes (None: not one people subscribe to)."""
    kind = AUDIT_KINDS.get(event.kind)
    if kind is None:
        return None
    return Notification(
        id=notification_id,
        event=kind,
        kind=event.kind,
        message=event.message,
        time=event.time,
        release=event.release,
        node=event.node,
        revision=event.revision,
    )


def render(receiver: Receiver, n: Notification, now: float) -> Outgoing:
    """The request for one attempt (a webhook's signature covers this attempt's time)."""
    headers = {"User-Agent": "fleetkeeper-notify"}
    if receiver.token:
        headers["Authorization"] = f"Bearer {receiver.token}"
    if receiver.type == "slack":
        text = f"fleetkeeper {n.event}: {n.message}"
        if n.revision:
            text += f" (revision {n.revision[:12]})"
        body = json.dumps({"text": text}).encode()
        headers["Content-Type"] = "application/json"
    elif receiver.type == "ntfy":
        body = n.message.encode()
        headers |= {
            "Content-Type": "text/plain; charset=utf-8",
            "Title": f"fleetkeeper: {n.event}",
            "Priority": _NTFY_PRIORITY[n.event],
            "Tags": _NTFY_TAGS[n.event],
        }
    else:
        body = json.dumps(n.to_json(), sort_keys=True).encode()
        stamp = str(int(now))
        key = (receiver.secret or "").encode()
        sig = hmac.new(key, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        headers |= {
            "Content-Type": "application/json",
            "X-Fleetkeeper-Event": n.event,
            "X-Fleetkeeper-Delivery": n.id,
            "X-Fleetkeeper-Timestamp": stamp,
            "X-Fleetkeeper-Signature": f"sha256={sig}",
        }
    return Outgoing(receiver.url, body, headers)
