"""HTTP client for the reconciler: register, long-poll the desired state, post status.

Outbound only. Server URLs are tried in order; the first that answers wins and is tried
first next time. A 401 on a node endpoint means the stored node token is no longer valid:
register again with the join token (``bootstrapTokenFile``) and retry once.

After the first registration the node token in ``stateDir/node.token`` is the node's
identity: the join token is not needed any more and its file may be removed. The
reconciler refuses to register a name that is already registered unless the caller
proves it holds that name's current credential, so a leaked join token cannot take over
a running node.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

import schema
from agent.download import redact
from agent.errors import AuthError, ConfigError, ServerError
from agent.state import StateDir
from fleetkeeper_common.signing import BATCH_TYPE

log = logging.getLogger(__name__)

_register_lock = threading.Lock()


# The reconciler closes idle connections after keepAliveSeconds (default 20 s); expire
# ours first, yet after the 15 s heartbeat so that its connection is reused.
KEEPALIVE_SECONDS = 18.0


def _message(resp: httpx.Response) -> str:
    """The reconciler's ``message`` (it says what was wrong and what to do), else the text."""
    try:
        doc = resp.json()
    except ValueError:
        return resp.text[:300]
    return str(doc.get("message")) if isinstance(doc, dict) else resp.text[:300]


class ServerClient:
    def __init__(
        self,
        servers: Sequence[str],
        node: str,
        state: StateDir,
        *,
        bootstrap_token: Callable[[], str | None],
        facts: Callable[[], Mapping[str, Any]],
        connect_timeout: float = 3.0,
    ) -> None:
        self.servers = list(servers)
        self.node = node
        self.state = state
        self.bootstrap_token = bootstrap_token
        self.facts = facts
        self.preferred = 0
        # Keep the heartbeat connection between reports (every 15 s): httpx's default 5 s
        # expiry made every heartbeat a new TCP (and TLS) connection.
        self.http = httpx.Client(
            timeout=httpx.Timeout(10.0, connect=connect_timeout),
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_SECONDS),
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def _send(
        self, method: str, path: str, *, token: str, timeout: float | None = None, **kw: Any
    ) -> httpx.Response:
        order = self.servers[self.preferred :] + self.servers[: self.preferred]
        errors = []
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        for base in order:
            try:
                extra: dict[str, Any] = {}
                if timeout is not None:
                    extra["timeout"] = httpx.Timeout(timeout, connect=self.http.timeout.connect)
                resp = self.http.request(method, base + path, headers=headers, **kw, **extra)
            except httpx.TransportError as exc:
                errors.append(f"{redact(base)}: {type(exc).__name__}: {exc}")
                continue
            if resp.status_code >= 500:
                errors.append(f"{redact(base)}: HTTP {resp.status_code}")
                continue
            self.preferred = self.servers.index(base)
            return resp
        raise ServerError("no reconciler answered: " + "; ".join(errors))

    # -- registration ---------------------------------------------------------------------
    def register(self, stale: str | None = None) -> str:
        """Register with the bootstrap token and store the node token (0600).

        With ``stale`` (a token that was just refused), another thread that already
        registered again wins: its fresh token is returned instead of rotating once more.
        """
        with _register_lock:
            stored = self.state.read_token()
            if stored and stored != stale:
                return stored
            return self._register()

    def _register(self) -> str:
        join = self.bootstrap_token()
        if not join:
            raise ConfigError(
                f"node {self.node} holds no node credential and no join token: ask the operator "
                f"for one (`fleetkeeper token create --node {self.node}`) and put it in "
                "bootstrapTokenFile (or FLEETKEEPER_BOOTSTRAP_TOKEN)"
            )
        facts = dict(self.facts())
        problems = schema.errors("register", facts)
        if problems:
            raise ConfigError("register request would be invalid: " + "; ".join(problems))
        resp = self._send("POST", f"/v1/nodes/{self.node}/register", token=join, json=facts)
        if resp.status_code in (401, 403, 409):
            raise ConfigError(
                f"the reconciler refused to register node {self.node} with the join token in "
                f"bootstrapTokenFile (HTTP {resp.status_code}): {_message(resp)}"
            )
        if resp.status_code not in (200, 201):
            raise ServerError(f"register: HTTP {resp.status_code}: {resp.text[:300]}")
        token = str(resp.json().get("token") or "")
        if not token:
            raise ServerError("register: the response carries no token")
        self.state.write_token(token)
        log.info(
            "registered node %s; its node credential is in %s (the join token is no longer needed)",
            self.node,
            self.state.token_file,
        )
        return token

    def token(self) -> str:
        return self.state.read_token() or self.register()

    def _node_call(
        self, method: str, path: str, *, timeout: float | None = None, **kw: Any
    ) -> httpx.Response:
        token = self.token()
        resp = self._send(method, path, token=token, timeout=timeout, **kw)
        if resp.status_code == 401:
            log.info("node token refused (401): registering again")
            resp = self._send(method, path, token=self.register(stale=token), timeout=timeout, **kw)
            if resp.status_code == 401:
                raise AuthError(f"{method} {path}: 401 even after registering again")
        return resp

    # -- desired state --------------------------------------------------------------------
    def desired(self, etag: str | None, wait: int) -> tuple[object, str | None, bool]:
        """(raw JSON, etag, changed). ``changed`` False on 304 (or no document yet).

        Asks for the signed envelope, batch form preferred (an earlier reconciler answers
        with the single form, which verifies too); the caller (``agent.trust``) verifies it
        before any field is believed, and validates the document inside against the schema.
        """
        headers = {"Accept": BATCH_TYPE}
        if etag:
            headers["If-None-Match"] = etag
        resp = self._node_call(
            "GET",
            f"/v1/nodes/{self.node}/desired",
            params={"wait": wait},
            headers=headers,
            timeout=wait + 15.0,
        )
        if resp.status_code == 304:
            return None, etag, False
        if resp.status_code == 404:
            return None, etag, False
        if resp.status_code != 200:
            raise ServerError(f"GET desired: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            raw: object = resp.json()
        except ValueError as exc:
            raise ServerError(f"GET desired: the body is not JSON: {exc}") from exc
        return raw, resp.headers.get("etag"), True

    def signing_key(self) -> str:
        """The reconciler's public key line (``GET /v1/signing-key``), for trust on first use."""
        resp = self._send("GET", "/v1/signing-key", token=self.token())
        if resp.status_code != 200:
            raise ServerError(f"GET /v1/signing-key: HTTP {resp.status_code}")
        return resp.text

    def report(self, report: Mapping[str, Any]) -> None:
        resp = self._node_call("POST", f"/v1/nodes/{self.node}/status", json=dict(report))
        if resp.status_code not in (200, 202, 204):
            raise ServerError(f"POST status: HTTP {resp.status_code}: {resp.text[:300]}")
