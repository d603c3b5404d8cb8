"""A workload that serves what it was given as secrets (issue 17 tests and the demo).

``bin/secret-reader --port N`` serves on 127.0.0.1: ``/healthz`` (``secret-reader
VERSION``), ``/env/NAME`` (the environment variable NAME), ``/file/NAME`` (the file NAME in
``$FLEETKEEPER_SECRETS_DIR``), ``/mode/NAME`` (that file's and its directory's modes, octal).
``--version`` prints ``secret-reader VERSION``. What it read is never printed to its log.
"""

from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

from tests.helpers.artifacts import Artifact, describe, program_release

PROGRAM = """#!{python}
import http.server, os, stat, sys
VERSION = {version!r}
args = sys.argv[1:]
if "--version" in args:
    print(f"secret-reader {{VERSION}}")
    sys.exit(0)
port = int(args[args.index("--port") + 1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        code, body = 200, f"secret-reader {{VERSION}}".encode()
        try:
            where = os.environ.get("FLEETKEEPER_SECRETS_DIR", "")
            if parts[0] == "env":
                value = os.environ.get(parts[1])
                code, body = (404, b"unset") if value is None else (200, value.encode())
            elif parts[0] == "file":
                with open(os.path.join(where, parts[1]), "rb") as fh:
                    body = fh.read()
            elif parts[0] == "mode":
                f = os.stat(os.path.join(where, parts[1]))
                d = os.stat(where)
                body = f"{{stat.S_IMODE(f.st_mode):o}} {{stat.S_IMODE(d.st_mode):o}}".encode()
        except OSError as exc:
            code, body = 404, type(exc).__name__.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
print(f"secret-reader {{VERSION}} listening on {{port}}", flush=True)
srv.serve_forever()
"""


def build_secret_reader(dest: Path, version: str) -> Artifact:
    """``secret-reader-VERSION.tar.gz`` with ``bin/secret-reader`` in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"secret-reader-{version}.tar.gz"
    script = PROGRAM.format(python=sys.executable, version=version).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bin/secret-reader")
        info.size, info.mode, info.mtime = len(script), 0o755, 1_700_000_000
        tar.addfile(info, io.BytesIO(script))
    return describe(path)


def reader_release(
    version: str, art: Artifact, url: str, secrets: list[dict[str, str]] | None = None
) -> dict[str, object]:
    """The ``secret-reader`` release: port from the node label, the canary first."""
    doc: dict[str, object] = program_release("secret-reader", version, art, url, roles=("coding",))
    if secrets:
        doc["secrets"] = secrets
    return doc
