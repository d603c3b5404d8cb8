"""The node's own age identity: created on first start in the state directory (0600), so
secrets in the fleet repo can be encrypted to this node and to no one else.

``<stateDir>/age-identity.txt`` is in age-keygen's format (a ``# public key:`` comment and
the ``AGE-SECRET-KEY-1`` line), so the ``age`` CLI can use it too
(``age -d -i <stateDir>/age-identity.txt``). It never leaves the node: the reconciler only
ever sees the public recipient, which an operator copies into ``nodes/<node>.yaml`` as
``ageRecipient:`` (``fleetkeeper-agent identity --config FILE`` prints it).
"""

from __future__ import annotations

import logging
import time

from agent.errors import ConfigError
from agent.state import StateDir, write_atomic
from fleetkeeper_common.age import AgeError, Identity, generate_identity, parse_identity

log = logging.getLogger(__name__)

IDENTITY_FILE = "age-identity.txt"


def read_identity(state: StateDir) -> Identity | None:
    """The node's identity, or None when none was created yet."""
    path = state.root / IDENTITY_FILE
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the node's age identity {path}: {exc.strerror}") from exc
    try:
        return parse_identity(text)
    except AgeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def ensure_identity(state: StateDir) -> Identity:
    """The node's identity, created (0600) when there is none yet."""
    found = read_identity(state)
    if found is not None:
        return found
    ident = generate_identity()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    text = f"# created: {stamp}\n# public key: {ident.recipient}\n{ident.secret}\n"
    write_atomic(state.root / IDENTITY_FILE, text.encode(), mode=0o600)
    log.info(
        "created this node's age identity in %s; public recipient %s "
        "(add it to the node's file as ageRecipient)",
        state.root / IDENTITY_FILE,
        ident.recipient,
    )
    return ident
