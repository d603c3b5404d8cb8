"""Dashboard sessions: an expiring value derived from the admin token by HMAC (pure).

The cookie never holds the token itself: ``<expires>.<hmac-sha256(token, expires)>``.
Rotating the admin token ends every session.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "fk_session"
SESSION_SECONDS = 12 * 3600
_CONTEXT = "fleetkeeper-dashboard-session-v1"


def _mac(token: str, expires: int) -> str:
    msg = f"{_CONTEXT}:{expires}".encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()


def mint(token: str, now: float, lifetime: int = SESSION_SECONDS) -> str:
    """A session value valid until ``now + lifetime``."""
    expires = int(now) + lifetime
    return f"{expires}.{_mac(token, expires)}"


def valid(token: str, value: str | None, now: float) -> bool:
    """True when ``value`` was minted with ``token`` and has not expired."""
    if not value:
        return False
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or len(mac) != 64:
        return False
    expires = int(expires_text)
    return expires > now and hmac.compare_digest(mac, _mac(token, expires))


def token_matches(token: str, given: str | None) -> bool:
    """Constant-time comparison of a presented token with the admin token."""
    return bool(given) and hmac.compare_digest(
        hashlib.sha256(token.encode()).digest(), hashlib.sha256((given or "").encode()).digest()
    )
