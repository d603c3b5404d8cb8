"""Bearer tokens: node tokens (stored as sha256 hex), the bootstrap and admin tokens.

Every comparison is between sha256 digests with ``hmac.compare_digest``, so timing
reveals nothing about the secret. Node token hashes are cached in memory so that the
hot path (a conditional GET of desired state) never touches the database.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from typing import Literal

from starlette.requests import Request

from reconciler.api.errors import ApiError

TokenCheck = Literal["ok", "other-node", "unknown"]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_token() -> str:
    """A fresh node token: 256 random bits, URL-safe (43 characters)."""
    return secrets.token_urlsafe(32)


def bearer(request: Request) -> str:
    """The token of ``Authorization: Bearer <token>``; 401 when missing or malformed."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "missing credentials: send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token


def same_secret(presented: str, expected: str | None) -> bool:
    if expected is None:
        return False
    return hmac.compare_digest(hash_token(presented), hash_token(expected))


class NodeTokens:
    """node -> token hash, and the reverse, kept in memory (loaded from the store)."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._by_node: dict[str, str] = {}
        self._by_hash: dict[str, str] = {}
        for node, token_hash in pairs:
            self.set(node, token_hash)

    def set(self, node: str, token_hash: str) -> None:
        old = self._by_node.get(node)
        if old is not None:
            self._by_hash.pop(old, None)
        self._by_node[node] = token_hash
        self._by_hash[token_hash] = node

    def remove(self, node: str) -> None:
        old = self._by_node.pop(node, None)
        if old is not None:
            self._by_hash.pop(old, None)

    def known_nodes(self) -> frozenset[str]:
        return frozenset(self._by_node)

    def pairs(self) -> list[tuple[str, str]]:
        """(node, token hash) of every node (a copy: any thread may call it)."""
        return list(self._by_node.items())

    def __contains__(self, node: object) -> bool:
        return node in self._by_node

    def __len__(self) -> int:
        return len(self._by_node)

    def check(self, node: str, token: str) -> TokenCheck:
        presented = hash_token(token)
        expected = self._by_node.get(node)
        if expected is not None and hmac.compare_digest(expected, presented):
            return "ok"
        # A lookup keyed by the digest leaks nothing about the token itself.
        return "other-node" if presented in self._by_hash else "unknown"


def require_node(request: Request, tokens: NodeTokens, node: str) -> None:
    """Allow only ``node``'s own token: 401 for an unknown token, 403 for another node's."""
    result = tokens.check(node, bearer(request))
    if result == "other-node":
        raise ApiError(403, f"this token belongs to another node, not to {node!r}")
    if result == "unknown":
        raise ApiError(
            401,
            f"unknown token for node {node!r}: register again (with a join token)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_secret(request: Request, expected: str | None, what: str) -> None:
    if expected is None:
        raise ApiError(401, f"{what} is disabled: the reconciler has no {what} token configured")
    if not same_secret(bearer(request), expected):
        raise ApiError(401, f"wrong {what} token", headers={"WWW-Authenticate": "Bearer"})
