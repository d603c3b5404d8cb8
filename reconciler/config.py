"""The reconciler configuration: one frozen object from file, then environment, then defaults.

Trust settings (branch, approval mode, allowed signers) live here and never in the fleet
repo being judged. Secrets come from files named here or from environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

import schema
from reconciler.approval.settings import DEFAULT_TAG_PATTERN, ApprovalSettings
from reconciler.errors import ConfigError
from reconciler.secrets import read_secret

DEFAULT_BRANCH = "main"
DEFAULT_LISTEN = "127.0.0.1:8700"
DEFAULT_HEARTBEAT_TTL = 90
DEFAULT_POLL_INTERVAL = 60.0
DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_STATE_DIR = "/var/lib/fleetkeeper"
DEFAULT_DESIRED_VALIDITY = 24 * 3600.0
DEFAULT_GC_FREEZE = 2.0  # survivors leave the young generations this often (reconciler/garbage.py)
DEFAULT_LEADER_LEASE = 10.0  # PostgreSQL replicas: a new leader within this (docs/server.md)
# HTTP server limits (slowloris and connection floods), see docs/server.md
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0  # a 1 MiB body at ~35 KiB/s
DEFAULT_KEEP_ALIVE = 20  # above the agents' 15 s heartbeat: their connection is reused
DEFAULT_MAX_CONNECTIONS = 20000  # 8,000 agents x 2 connections, plus people and margin
DEFAULT_MAX_HEADER_BYTES = 16 * 1024

ENV_BOOTSTRAP = "FLEETKEEPER_BOOTSTRAP_TOKEN"
ENV_ADMIN = "FLEETKEEPER_ADMIN_TOKEN"
ENV_WEBHOOK = "FLEETKEEPER_WEBHOOK_SECRET"

ReceiverType = Literal["webhook", "slack", "ntfy"]
NotificationEvent = Literal["halted", "stale", "succeeded", "refused", "failover"]
NOTIFICATION_EVENTS: tuple[NotificationEvent, ...] = (
    "halted",
    "stale",
    "succeeded",
    "refused",
    "failover",
)
DEFAULT_NOTIFY_ATTEMPTS = 5
DEFAULT_NOTIFY_BACKOFF = 2.0
DEFAULT_NOTIFY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Receiver:
    """One ``notifications:`` entry: where to send which events, and how hard to try."""

    name: str
    type: ReceiverType
    url: str = field(repr=False)  # may carry a secret (Slack's URLs do)
    events: frozenset[NotificationEvent] = frozenset(NOTIFICATION_EVENTS)
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    attempts: int = DEFAULT_NOTIFY_ATTEMPTS
    backoff: float = DEFAULT_NOTIFY_BACKOFF
    timeout: float = DEFAULT_NOTIFY_TIMEOUT


@dataclass(frozen=True)
class Config:
    repo: str
    branch: str = DEFAULT_BRANCH
    approval: ApprovalSettings = field(default_factory=ApprovalSettings)
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    database: str = ""  # resolved to sqlite:///<state_dir>/state.db when empty
    listen_host: str = "127.0.0.1"
    listen_port: int = 8700
    bootstrap_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    heartbeat_ttl: int = DEFAULT_HEARTBEAT_TTL
    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_body_bytes: int = DEFAULT_MAX_BODY
    signing_key_file: Path | None = None  # None: <stateDir>/signing_key, made on first start
    desired_validity: float = DEFAULT_DESIRED_VALIDITY
    notifications: tuple[Receiver, ...] = ()
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keep_alive: int = DEFAULT_KEEP_ALIVE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    leader_lease: float = DEFAULT_LEADER_LEASE
    gc_freeze_seconds: float = DEFAULT_GC_FREEZE
    source_file: Path | None = None

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.state_dir / 'state.db'}"


def _path(base: Path, value: object) -> Path | None:
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def _secret(
    base: Path, doc: Mapping[str, object], key: str, env_name: str, env: Mapping[str, str]
) -> str | None:
    """A secret from the environment first, else from the file the config names."""
    if env.get(env_name):
        return env[env_name].strip()
    path = _path(base, doc.get(key))
    return None if path is None else read_secret(path, key)


def _receivers(base: Path, entries: object) -> tuple[Receiver, ...]:
    """The ``notifications:`` list (already schema-valid); secrets read from their files."""
    out: list[Receiver] = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        where = f"notifications[{i}]"
        name = str(entry["name"])
        if any(r.name == name for r in out):
            raise ConfigError(f"{where}.name: {name!r} is used by an earlier receiver")
        url_file = _path(base, entry.get("urlFile"))
        url = read_secret(url_file, f"{where}.urlFile") if url_file else str(entry["url"])
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.urlFile: {url_file} does not hold an http(s) URL")
        secret_file = _path(base, entry.get("secretFile"))
        token_file = _path(base, entry.get("tokenFile"))
        kind = str(entry["type"])
        if kind == "webhook" and secret_file is None:
            raise ConfigError(f"{where}: a webhook receiver needs secretFile (its HMAC key)")
        out.append(
            Receiver(
                name=name,
                type="slack" if kind == "slack" else "ntfy" if kind == "ntfy" else "webhook",
                url=url,
                events=frozenset(
                    e for e in NOTIFICATION_EVENTS if e in entry.get("events", NOTIFICATION_EVENTS)
                ),
                secret=read_secret(secret_file, f"{where}.secretFile") if secret_file else None,
                token=read_secret(token_file, f"{where}.tokenFile") if token_file else None,
                attempts=int(entry.get("attempts", DEFAULT_NOTIFY_ATTEMPTS)),
                backoff=float(entry.get("backoffSeconds", DEFAULT_NOTIFY_BACKOFF)),
                timeout=float(entry.get("timeoutSeconds", DEFAULT_NOTIFY_TIMEOUT)),
            )
        )
    return tuple(out)


def parse_config(
    doc: Mapping[str, object], *, base: Path, env: Mapping[str, str], source: Path | None = None
) -> Config:
    """Build a Config from a parsed document; relative paths are relative to ``base``."""
    problems = schema.errors("reconciler-config", doc)
    if problems:
        where = str(source) if source else "config"
        raise ConfigError(f"{where} is invalid:\n  " + "\n  ".join(problems))
    appr = doc.get("approval") or {}
    assert isinstance(appr, dict)
    repo = str(doc["repo"])
    if "://" not in repo:
        repo = str(_path(base, repo))
    listen = str(doc.get("listen", DEFAULT_LISTEN))
    host, _, port = listen.rpartition(":")
    state_dir = _path(base, doc.get("stateDir")) or Path(DEFAULT_STATE_DIR)
    database = str(doc.get("database", ""))
    return Config(
        repo=repo,
        branch=str(doc.get("branch", DEFAULT_BRANCH)),
        approval=ApprovalSettings(
            mode="signed-tag" if appr.get("mode") == "signed-tag" else "merged-pr",
            tag_pattern=str(appr.get("tagPattern", DEFAULT_TAG_PATTERN)),
            threshold=int(appr.get("threshold", 1)),
            require_signed_merges=bool(appr.get("requireSignedMerges", False)),
            allowed_signers=_path(base, appr.get("allowedSigners")),
            gpg_keyring=_path(base, appr.get("gpgKeyring")),
            baseline=str(appr["baseline"]).lower() if appr.get("baseline") else None,
        ),
        state_dir=state_dir,
        database=database,
        listen_host=host,
        listen_port=int(port),
        bootstrap_token=_secret(base, doc, "bootstrapTokenFile", ENV_BOOTSTRAP, env),
        admin_token=_secret(base, doc, "adminTokenFile", ENV_ADMIN, env),
        webhook_secret=_secret(base, doc, "webhookSecretFile", ENV_WEBHOOK, env),
        heartbeat_ttl=int(str(doc.get("heartbeatTTLSeconds", DEFAULT_HEARTBEAT_TTL))),
        poll_interval=float(str(doc.get("pollIntervalSeconds", DEFAULT_POLL_INTERVAL))),
        max_body_bytes=int(str(doc.get("maxBodyBytes", DEFAULT_MAX_BODY))),
        signing_key_file=_path(base, doc.get("signingKeyFile")),
        desired_validity=float(str(doc.get("desiredValiditySeconds", DEFAULT_DESIRED_VALIDITY))),
        notifications=_receivers(base, doc.get("notifications")),
        header_timeout=float(str(doc.get("headerTimeoutSeconds", DEFAULT_HEADER_TIMEOUT))),
        body_timeout=float(str(doc.get("bodyTimeoutSeconds", DEFAULT_BODY_TIMEOUT))),
        keep_alive=int(str(doc.get("keepAliveSeconds", DEFAULT_KEEP_ALIVE))),
        max_connections=int(str(doc.get("maxConnections", DEFAULT_MAX_CONNECTIONS))),
        max_header_bytes=int(str(doc.get("maxHeaderBytes", DEFAULT_MAX_HEADER_BYTES))),
        leader_lease=float(str(doc.get("leaderLeaseSeconds", DEFAULT_LEADER_LEASE))),
        gc_freeze_seconds=float(str(doc.get("gcFreezeSeconds", DEFAULT_GC_FREEZE))),
        source_file=source,
    )


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the reconciler config file at ``path``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        doc = yaml.load(text, Loader=yaml.CSafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return parse_config(
        doc, base=path.parent.resolve(), env=os.environ if env is None else env, source=path
    )
