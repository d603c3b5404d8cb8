"""The poll step: long-poll the desired state (ETag) and accept a new document.

A new document for this node is stored in the state directory first (a restarted agent
converges from it while the reconciler is unreachable), then published to the converge
thread through :class:`Latest`. What is checked before a document is accepted (its
signature, node, expiry, generation and the local policy) is :func:`agent.trust.check`,
then, with ``approvers`` set, the approver's own signature on every workload's file
(:func:`approved_by_signers`: ``agent.evidence`` and ``agent.approvers``); a refused
document changes nothing, and why is kept in :class:`Latest` for the report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schema
from agent import approvers
from agent.client import ServerClient
from agent.errors import AgentError, ConfigError
from agent.evidence import EvidenceRefused, chains
from agent.keys import Trust, load_trust, record_first_use
from agent.policy import LocalPolicy
from agent.state import StateDir
from agent.trust import Accepted, check

log = logging.getLogger(__name__)

MIN_POLL_SECONDS = 1.0


class Latest:
    """The latest accepted desired document and its ETag, shared by the agent's threads;
    ``arrived`` wakes the converge thread."""

    def __init__(self, document: dict[str, Any] | None, etag: str | None) -> None:
        self._lock = threading.Lock()
        self._document, self._etag = document, etag
        self.arrived = threading.Event()
        self.refused: str | None = None  # why the last document received was refused
        self.trust: Trust | None = None

    @property
    def document(self) -> dict[str, Any] | None:
        with self._lock:
            return self._document

    @property
    def etag(self) -> str | None:
        with self._lock:
            return self._etag

    def put(self, document: dict[str, Any], etag: str | None) -> None:
        with self._lock:
            self._document, self._etag = document, etag
        self.arrived.set()


@dataclass(frozen=True)
class Checks:
    """What the poller checks a document against (all from the agent's own config)."""

    node: str
    trusted_keys: Path | None
    policy: LocalPolicy
    approvers: approvers.ApproverKeys | None = None  # None: no approval evidence checked
    labels: Mapping[str, str] = field(default_factory=dict)  # resolve ${node.labels.*}
    platform: str = ""
    gnupg_home: Path = Path()  # the approvers' OpenPGP home (under stateDir)


def _trust(client: ServerClient, state: StateDir, checks: Checks) -> Trust:
    trust = load_trust(checks.trusted_keys, state.root)
    if trust is None:
        trust = record_first_use(client.signing_key(), state.root)
    return trust


def accept(raw: object, latest: Latest, trust: Trust, checks: Checks) -> Accepted | str:
    """The accepted document, or why ``raw`` is refused."""
    verdict = check(
        raw,
        node=checks.node,
        trusted=trust.keys,
        last=latest.document,
        policy=checks.policy,
        now=time.time(),
    )
    if not isinstance(verdict, Accepted):
        reason = verdict.reason
        if trust.mode == "tofu" and reason.startswith("signed by untrusted key"):
            reason += f" (trusted on first use: {', '.join(trust.keys)}; pin the new key)"
        return reason
    problems = schema.errors("desired-state", verdict.document)
    if problems:
        # where, not what: a schema message quotes the value, which may be a secret
        where = sorted({p.split(": ", 1)[0] for p in problems})
        return "desired state document is invalid at " + ", ".join(where[:5])
    if checks.approvers is not None:
        why = approved_by_signers(verdict.document, checks)
        if why is not None:
            return why
    return verdict


def approved_by_signers(document: dict[str, Any], checks: Checks) -> str | None:
    """Why the document's workloads are not shown to be approved (None: they are)."""
    assert checks.approvers is not None
    try:
        claims = chains(document, node=checks.node, labels=checks.labels, platform=checks.platform)
    except EvidenceRefused as exc:
        return "approval evidence: " + exc.reason
    for claim in claims:
        try:
            verdict = approvers.verify(claim.signed, checks.approvers, checks.gnupg_home)
        except ConfigError as exc:  # a pinned file gone or unreadable: refuse, keep polling
            return f"approval evidence: cannot check {claim.what}: {exc}"
        if verdict.signer is None:
            why = f"{claim.what} is not signed by an approver ({verdict.detail})"
            return "approval evidence: " + why
    return None


def poll_loop(
    client: ServerClient,
    latest: Latest,
    state: StateDir,
    *,
    checks: Checks,
    wait_seconds: int,
    stop: threading.Event,
    backoff: Callable[[int], float],
) -> None:
    """Poll until ``stop`` is set; back off (``backoff(failures)`` seconds) on errors."""
    failures = 0
    refused_etag: str | None = None  # poll past a refused document, not for it again
    while not stop.is_set():
        asked = time.monotonic()
        try:
            trust = latest.trust = _trust(client, state, checks)
            raw, etag, changed = client.desired(refused_etag or latest.etag, wait_seconds)
        except ConfigError as exc:
            log.error("%s", exc)
            failures += 1
            stop.wait(backoff(failures))
            continue
        except AgentError as exc:
            failures += 1
            delay = backoff(failures)
            log.warning("poll failed (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay)
            continue
        failures = 0
        if changed and raw is not None:
            verdict = accept(raw, latest, trust, checks)
            if isinstance(verdict, str):
                if verdict != latest.refused:
                    log.error("refused desired state: %s", verdict)
                latest.refused, refused_etag = verdict, etag
                stop.wait(1.0)
                continue
            latest.refused, refused_etag = None, None
            doc = verdict.document
            state.write_desired(doc, etag)
            latest.put(doc, etag)
            log.info(
                "desired state generation %s (revision %s)%s, signed by %s, expires %s",
                doc.get("generation"),
                (doc.get("revision") or "-")[:12],
                " re-signed" if verdict.refresh else "",
                verdict.keyid,
                doc.get("expiresAt"),
            )
        elif time.monotonic() - asked < MIN_POLL_SECONDS:
            # No news and no long-poll held (wait=0, no document yet, a proxy that answers
            # at once): do not spin.
            stop.wait(MIN_POLL_SECONDS)
