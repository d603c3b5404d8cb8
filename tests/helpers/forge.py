"""A stand-in for a hosted forge's comment API on 127.0.0.1: GitHub and Gitea/Forgejo issue
comments (``/repos/{owner}/{repo}/issues/{n}/comments``, edit with PATCH) and GitLab merge
request notes (``/projects/{id}/merge_requests/{iid}/notes``, edit with PUT), with paging
and token checks as each forge documents them. Only the hosted forge is doubled; the
scripts under test talk to it over a real socket."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_LIST = re.compile(
    r"^(?:/api/v1|/api/v4)?(?:/repos/[^/]+/[^/]+/issues/(\d+)/comments"
    r"|/projects/[^/]+/merge_requests/(\d+)/notes)$"
)
_EDIT = re.compile(
    r"^(?:/api/v1|/api/v4)?(?:/repos/[^/]+/[^/]+/issues/comments/(\d+)"
    r"|/projects/[^/]+/merge_requests/\d+/notes/(\d+))$"
)


@dataclass
class ForgeDouble:
    token: str
    gitlab: bool = False
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""
    _next: int = 100

    def authorized(self, headers: Any) -> bool:
        if self.gitlab:
            return bool(headers.get("PRIVATE-TOKEN") == self.token)
        return headers.get("Authorization") in (f"token {self.token}", f"Bearer {self.token}")

    def add(self, body: str) -> int:
        self._next += 1
        self.comments[self._next] = {"id": self._next, "body": body}
        return self._next


def _handler(forge: ForgeDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, doc: object) -> None:
            data = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            doc: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
            return doc

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            forge.requests.append((method, parts.path))
            if not forge.authorized(self.headers):
                self._send(401, {"message": "Bad credentials"})
                return
            if _LIST.match(parts.path) and method == "GET":
                query = parse_qs(parts.query)
                page = int(query.get("page", ["1"])[0])
                size = int(query.get("per_page", query.get("limit", ["30"]))[0])
                items = sorted(forge.comments.values(), key=lambda c: c["id"])
                self._send(200, items[(page - 1) * size : page * size])
            elif _LIST.match(parts.path) and method == "POST":
                new = forge.add(self._body()["body"])
                self._send(201, forge.comments[new])
            elif (m := _EDIT.match(parts.path)) and method == ("PUT" if forge.gitlab else "PATCH"):
                cid = int(m.group(1) or m.group(2))
                if cid not in forge.comments:
                    self._send(404, {"message": "Not Found"})
                    return
                forge.comments[cid]["body"] = self._body()["body"]
                self._send(200, forge.comments[cid])
            else:
                self._send(404, {"message": "Not Found"})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_PUT(self) -> None:
            self._handle("PUT")

    return Handler


@contextmanager
def forge_double(token: str, *, gitlab: bool = False) -> Iterator[ForgeDouble]:
    forge = ForgeDouble(token, gitlab)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(forge))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    forge.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield forge
    finally:
        server.shutdown()
        server.server_close()
