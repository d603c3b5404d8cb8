"""The keys this agent trusts to sign its desired state: pinned, or trusted on first use.

``trustedKeys`` in the agent config pins them (OpenSSH public key lines; list old and new
while the reconciler's key rotates). Without it the first key the reconciler serves at
``GET /v1/signing-key`` is recorded in ``<stateDir>/known_signing_keys`` (as SSH records a
host in known_hosts) with a warning, and only that key is trusted from then on: a changed key
is refused until an operator pins it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.errors import ConfigError
from agent.state import write_atomic
from fleetkeeper_common.signing import parse_public_keys

log = logging.getLogger(__name__)

KNOWN_KEYS_FILE = "known_signing_keys"
TOFU_WARNING = (
    "trust on first use: no trustedKeys in the agent config; trusting the key the "
    "reconciler served first ({keyid}, recorded in {path}); pin it with trustedKeys"
)


@dataclass(frozen=True)
class Trust:
    keys: dict[str, Ed25519PublicKey]
    mode: Literal["pinned", "tofu"]
    source: Path

    def describe(self) -> str:
        ids = ", ".join(sorted(self.keys)) or "none"
        if self.mode == "pinned":
            return f"trusted keys pinned in {self.source}: {ids}"
        return TOFU_WARNING.format(keyid=ids, path=self.source)


def _read(path: Path, what: str) -> dict[str, Ed25519PublicKey]:
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror}") from exc
    try:
        keys = parse_public_keys(text, str(path))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
    if not keys:
        raise ConfigError(f"{what} {path}: holds no ssh-ed25519 key")
    return keys


def load_trust(trusted_keys: Path | None, state_dir: Path) -> Trust | None:
    """The pinned keys, else the key recorded on first use (None: none recorded yet)."""
    if trusted_keys is not None:
        return Trust(_read(trusted_keys, "trustedKeys"), "pinned", trusted_keys)
    known = state_dir / KNOWN_KEYS_FILE
    if not known.exists():
        return None
    return Trust(_read(known, KNOWN_KEYS_FILE), "tofu", known)


def record_first_use(served: str, state_dir: Path) -> Trust:
    """Record the key the reconciler served (its first line) and trust it from now on."""
    keys = parse_public_keys(served.splitlines()[0] if served.strip() else "", "signing-key")
    if len(keys) != 1:
        raise ConfigError("GET /v1/signing-key did not answer one ssh-ed25519 key")
    known = state_dir / KNOWN_KEYS_FILE
    write_atomic(known, (served.splitlines()[0].strip() + "\n").encode(), mode=0o600)
    trust = Trust(keys, "tofu", known)
    log.warning("%s", trust.describe())
    return trust
