"""The agent's config: one frozen object from the YAML file, then environment, then defaults."""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import schema
from agent.approvers import ApproverKeys
from agent.errors import ConfigError
from agent.policy import LocalPolicy

DEFAULT_HEARTBEAT_SECONDS = 15.0
DEFAULT_POLL_WAIT_SECONDS = 30
DEFAULT_KEEP_VERSIONS = 3
DEFAULT_SUPERVISOR = "process"
DEFAULT_MAX_BACKOFF_SECONDS = 30.0
DEFAULT_STOP_GRACE_SECONDS = 5.0
DEFAULT_RESYNC_SECONDS = 30.0
DEFAULT_SELF_CONFIRM_SECONDS = 10.0
BOOTSTRAP_TOKEN_ENV = "FLEETKEEPER_BOOTSTRAP_TOKEN"


@dataclass(frozen=True)
class AgentConfig:
    servers: tuple[str, ...]
    node: str
    install_root: Path
    state_dir: Path
    bootstrap_token_file: Path | None = None
    roles: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    poll_wait_seconds: int = DEFAULT_POLL_WAIT_SECONDS
    supervisor: str = DEFAULT_SUPERVISOR
    keep_versions: int = DEFAULT_KEEP_VERSIONS
    max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    resync_seconds: float = DEFAULT_RESYNC_SECONDS
    self_confirm_seconds: float = DEFAULT_SELF_CONFIRM_SECONDS
    trusted_keys: Path | None = None  # None: trust on first use (agent.keys)
    approvers: ApproverKeys | None = None  # None: approval evidence is not checked
    policy: LocalPolicy = field(default_factory=LocalPolicy)
    allow_insecure_server: bool = False
    workload_user: str | None = None  # run.user of a release wins
    source: Path | None = None

    def bootstrap_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The join token from the environment or ``bootstrapTokenFile`` (None: none).

        Only needed to register; once ``stateDir/node.token`` holds the node credential,
        the file may be removed."""
        env = os.environ if environ is None else environ
        if env.get(BOOTSTRAP_TOKEN_ENV):
            return env[BOOTSTRAP_TOKEN_ENV].strip()
        if self.bootstrap_token_file is None:
            return None
        try:
            return self.bootstrap_token_file.read_text("utf-8").strip() or None
        except FileNotFoundError:
            return None  # removed after the first registration, as the docs allow
        except OSError as exc:
            raise ConfigError(
                f"cannot read bootstrapTokenFile {self.bootstrap_token_file}: {exc}"
            ) from exc


def from_document(doc: Mapping[str, Any], *, base: Path | None = None) -> AgentConfig:
    """Validate ``doc`` against schema/agent-config and build the config.

    Relative paths are taken relative to ``base`` (the config file's folder).
    """
    problems = schema.errors("agent-config", doc)
    if problems:
        raise ConfigError("agent config is invalid:\n  " + "\n  ".join(problems))

    def path(value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() or base is None else base / p

    server = doc["server"]
    servers = tuple(s.rstrip("/") for s in ((server,) if isinstance(server, str) else server))
    insecure_server = bool(doc.get("allowInsecureServer", False))
    for url in servers:
        if not insecure_server and not secure_server(url):
            raise ConfigError(
                f"server {url}: plain http to a non-loopback address; use https "
                "(or allowInsecureServer: true on a network you trust)"
            )
    return AgentConfig(
        servers=servers,
        node=str(doc["node"]),
        install_root=path(doc["installRoot"]),
        state_dir=path(doc["stateDir"]),
        bootstrap_token_file=path(doc["bootstrapTokenFile"])
        if doc.get("bootstrapTokenFile")
        else None,
        roles=tuple(doc.get("roles") or ()),
        labels=dict(doc.get("labels") or {}),
        heartbeat_seconds=float(doc.get("heartbeatSeconds", DEFAULT_HEARTBEAT_SECONDS)),
        poll_wait_seconds=int(doc.get("pollWaitSeconds", DEFAULT_POLL_WAIT_SECONDS)),
        supervisor=str(doc.get("supervisor", DEFAULT_SUPERVISOR)),
        keep_versions=int(doc.get("keepVersions", DEFAULT_KEEP_VERSIONS)),
        max_backoff_seconds=float(doc.get("maxBackoffSeconds", DEFAULT_MAX_BACKOFF_SECONDS)),
        stop_grace_seconds=float(doc.get("stopGraceSeconds", DEFAULT_STOP_GRACE_SECONDS)),
        resync_seconds=float(doc.get("resyncSeconds", DEFAULT_RESYNC_SECONDS)),
        self_confirm_seconds=float(
            doc.get("selfUpdateConfirmSeconds", DEFAULT_SELF_CONFIRM_SECONDS)
        ),
        trusted_keys=path(doc["trustedKeys"]) if doc.get("trustedKeys") else None,
        approvers=_approvers(doc.get("approvers"), path),
        policy=LocalPolicy(
            allowed_programs=frozenset(doc.get("allowedPrograms") or ()),
            allow_insecure_urls=bool(doc.get("allowInsecureURLs", False)),
            allow_file_urls=bool(doc.get("allowFileURLs", False)),
        ),
        allow_insecure_server=insecure_server,
        workload_user=str(doc["workloadUser"]) if doc.get("workloadUser") else None,
    )


def _approvers(block: Any, path: Callable[[str], Path]) -> ApproverKeys | None:
    if not block:
        return None
    keys = ApproverKeys(
        path(block["allowedSigners"]) if block.get("allowedSigners") else None,
        path(block["gpgKeyring"]) if block.get("gpgKeyring") else None,
    )
    for what, p in (("allowedSigners", keys.allowed_signers), ("gpgKeyring", keys.gpg_keyring)):
        if p is not None and not p.is_file():
            raise ConfigError(f"approvers.{what} {p}: no such file")
    return keys


def secure_server(url: str) -> bool:
    """https, or plain http to a loopback address (the traffic never leaves the machine)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(path: Path) -> AgentConfig:
    """Read and validate the YAML config at ``path``."""
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(doc).__name__}")
    cfg = from_document(doc, base=path.resolve().parent)
    return AgentConfig(**{**cfg.__dict__, "source": path})
