"""One desired workload, parsed once from the desired-state document into a frozen value.

The client validated the document against ``schema/desired-state.schema.json``; this is the
one place that reads its fields, so the converge, stage, self-update and observe steps work
on typed attributes. ``doc`` keeps the entry as received: the runtimes describe a process
from it, and it is what gets saved (``<stateDir>/workloads/<name>/<version>.json``) to
start that version again later. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.errors import WorkloadError
from agent.runtimes.base import WorkloadDoc

DEFAULT_HEALTH_TIMEOUT = 60.0


@dataclass(frozen=True)
class Artifact:
    url: str
    sha256: str
    size: int | None  # required by the schema; None only in a document stored before that
    unpacked_size: int | None = None  # the most the archive may unpack to


DEFAULT_DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True)
class Drain:
    """``drain: {http: URL, timeoutSeconds: N}`` or ``drain: {file: PATH, timeoutSeconds: N}``."""

    http: str | None
    file: str | None
    timeout: float

    @classmethod
    def parse(cls, name: str, value: object) -> Drain | None:
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise WorkloadError(f"workload {name!r}: drain must be a mapping, got {value!r:.100}")
        http, file = value.get("http"), value.get("file")
        if (http is None) == (file is None):
            raise WorkloadError(f"workload {name!r}: drain needs exactly one of http or file")
        timeout = value.get("timeoutSeconds", DEFAULT_DRAIN_TIMEOUT)
        return cls(
            None if http is None else str(http),
            None if file is None else str(file),
            float(timeout) if isinstance(timeout, int | float) else DEFAULT_DRAIN_TIMEOUT,
        )


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # process | model
    version: str
    artifact: Artifact
    health_timeout: float  # seconds a restarted version has to prove itself
    # Whether "healthy" means more than "running": a health URL, or a model server's own.
    has_health_check: bool
    doc: WorkloadDoc
    # unix time before which the artifact is not fetched (``notBefore``: the reconciler
    # spreads a batch's downloads over ``rollout.spreadSeconds``); None: at once
    not_before: float | None = None
    # how the old process is asked to finish its work before it is stopped (``drain``)
    drain: Drain | None = None

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> Workload:
        """The workload entry ``doc``; a WorkloadError names the field that is missing."""
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise WorkloadError(f"a desired workload has no name: {dict(doc)!r:.200}")
        artifact = doc.get("artifact")
        if not isinstance(artifact, Mapping) or "sha256" not in artifact or "url" not in artifact:
            raise WorkloadError(f"workload {name!r}: artifact.url and artifact.sha256 are required")
        if "version" not in doc:
            raise WorkloadError(f"workload {name!r}: version is required")
        health = doc.get("health") or {}
        size, unpacked = artifact.get("size"), artifact.get("unpackedSize")
        return cls(
            name=name,
            kind=str(doc.get("kind", "process")),
            version=str(doc["version"]),
            artifact=Artifact(
                str(artifact["url"]),
                str(artifact["sha256"]),
                size if isinstance(size, int) else None,
                unpacked if isinstance(unpacked, int) else None,
            ),
            health_timeout=float(health.get("timeoutSeconds", DEFAULT_HEALTH_TIMEOUT)),
            has_health_check=bool(health.get("http")) or doc.get("kind") == "model",
            doc=doc,
            not_before=_instant(name, doc.get("notBefore")),
            drain=Drain.parse(name, doc.get("drain")),
        )

    @property
    def program(self) -> str:
        """The program ``run.command`` starts (the agent's own, for a self-update)."""
        return str((self.doc.get("run") or {}).get("command", ["bin/fleetkeeper-agent"])[0])


def _instant(name: str, value: object) -> float | None:
    """An RFC 3339 time (``2026-12-01T02:00:07Z``) as unix seconds."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise WorkloadError(
            f"workload {name!r}: notBefore {value!r} is not an RFC 3339 time"
        ) from None


@dataclass(frozen=True)
class Desired:
    """A node's desired-state document: its generation and workload entries (as received)."""

    generation: int
    entries: tuple[Mapping[str, Any], ...]

    @classmethod
    def parse(cls, document: Mapping[str, Any] | None) -> Desired:
        """``document`` (None: nothing desired yet, as before the first poll)."""
        doc = document or {}
        return cls(int(doc.get("generation", 0)), tuple(doc.get("workloads", [])))

    def names(self) -> set[str]:
        return {str(e["name"]) for e in self.entries}

    def entry(self, name: str) -> Mapping[str, Any] | None:
        return next((e for e in self.entries if e.get("name") == name), None)

    def key(self, entry: Mapping[str, Any]) -> str:
        """The ledger's identity of ``entry`` (see :func:`doc_key`)."""
        return doc_key(entry)

    def legacy_key(self, entry: Mapping[str, Any]) -> str:
        """The key an agent before ``retryGeneration`` stored for ``entry`` in this document
        (generation and entry), recognised so an upgrade does not retry a known-bad target."""
        blob = json.dumps([self.generation, entry], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# Scheduling, not the version: a re-planned spread must not make a failed version new.
_NOT_PART_OF_TARGET = frozenset({"notBefore"})


def doc_key(workload: Mapping[str, Any]) -> str:
    """Identity of what one desired entry asks this node to run (pure): its version,
    artifact (sha256) and configuration (run, health, probe, model args, drain) and its
    ``retryGeneration``, which the reconciler bumps on ``fleetkeeper rollout retry``.

    The document's ``generation`` is left out on purpose: it moves whenever anything for
    the node changes (another workload, a re-signed document), and a version that failed
    here must not be tried again for that. Not
    :func:`fleetkeeper_common.canonical.canonical_json`: the keys are stored in
    ``failed.json``, and an agent upgraded across a change of separators would retry a
    target it already knows to be bad.
    """
    target = {k: v for k, v in workload.items() if k not in _NOT_PART_OF_TARGET}
    blob = json.dumps(["target/2", target], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Outcome:
    """What converging one workload came to."""

    ok: bool
    phase: str
    message: str
    timings: Mapping[str, float]
    # A self-update hands over: the daemon must exec this argv now (same PID).
    exec_argv: tuple[str, ...] = ()
    # not converged yet on purpose (``notBefore``): converge again at this unix time
    retry_at: float | None = None
