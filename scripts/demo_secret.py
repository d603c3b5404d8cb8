"""Demo step: an API key reaches vps-1's workload, and the reconciler only ever holds
ciphertext.

The agents created their own age identities when they first started, so the key is
encrypted now, at demo time, to the recipients they print (``fleetkeeper-agent identity``);
example-fleet-repo/ carries a key encrypted to example recipients whose identities were
thrown away. The workload answers with the SHA-256 of what it read (as the env var and as
the file), never the key itself; then every reconciler file, log and API answer is searched
for the key.
"""

from __future__ import annotations

import hashlib
import io
import secrets
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml
from demo_fleet import ArtifactServer
from demo_procs import DemoFailed, free_port
from demo_ui import Git, cli, console, note

from reconciler.views.client import AdminClient

NODE = "vps-1"
READER = "secret-reader"

PROGRAM = '''#!/usr/bin/env python3
"""secret-reader (fleetkeeper demo): answers with the SHA-256 of the secrets it was given."""
import hashlib, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
if "--version" in sys.argv:
    print("secret-reader 1.0.0")
    sys.exit(0)
def digest(data):
    return hashlib.sha256(data).hexdigest() if data is not None else "missing"
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        env = os.environ.get("API_KEY")
        path = os.path.join(os.environ.get("FLEETKEEPER_SECRETS_DIR", "/nonexistent"), "api-key")
        try:
            with open(path, "rb") as fh:
                from_file = fh.read()
        except OSError:
            from_file = None
        body = (f"env {digest(env.encode() if env else None)}\\n"
                f"file {digest(from_file)}\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), H).serve_forever()
'''


def build_reader(out_dir: Path) -> tuple[Path, str, int]:
    data = PROGRAM.encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"bin/{READER}")
        info.size, info.mode, info.mtime = len(data), 0o755, 1_700_000_000
        tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    path = out_dir / f"{READER}-1.0.0-linux-amd64.tar.gz"
    path.write_bytes(blob)
    return path, hashlib.sha256(blob).hexdigest(), len(blob)


def _reader_release(url: str, sha256: str, size: int, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": READER,
        "version": "1.0.0",
        "description": "Reads an API key given as a secret (fleetkeeper demo)",
        "artifacts": [{"platform": "linux/amd64", "url": url, "sha256": sha256, "size": size}],
        "run": {"command": [f"bin/{READER}", "--port", str(port)]},
        "health": {"http": f"http://127.0.0.1:{port}/", "timeoutSeconds": 10},
        "versionProbe": [f"bin/{READER}", "--version"],
        "targets": {"nodes": [NODE]},
        "secrets": [
            {"name": "API_KEY", "from": "secrets/secret-reader/api-key.age", "as": "env"},
            {"name": "api-key", "from": "secrets/secret-reader/api-key.age", "as": "file"},
        ],
    }


def _run(env: Mapping[str, str], argv: list[str], cwd: Path, stdin: str | None = None) -> str:
    words = (
        ["fleetkeeper" if argv[2] == "reconciler.cli" else "fleetkeeper-agent", *argv[3:]]
        if argv[1] == "-m"
        else [Path(argv[0]).name, *argv[1:]]
    )
    shown = " ".join(words)
    prefix = "printf '***' | " if stdin is not None else ""
    console.print(f"$ {prefix}{shown}", style="dim", markup=False, soft_wrap=True)
    proc = subprocess.run(argv, cwd=cwd, env=dict(env), input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoFailed(f"{shown} exited {proc.returncode}: {proc.stderr.strip()}")
    console.print(proc.stdout.rstrip(), markup=False, highlight=False)
    return proc.stdout


def secret_reaches_workload(
    root: Path,
    work: Path,
    git: Git,
    env: Mapping[str, str],
    client: AdminClient,
    artifacts: ArtifactServer,
    approve: Callable[[str], None],
    wait: Callable[[str, Callable[[Mapping[str, Any]], bool]], Mapping[str, Any]],
) -> None:
    """Encrypt a fresh key to vps-1, roll out a workload that reads it, search for it."""
    api_key = "sk-demo-" + secrets.token_urlsafe(24)
    git("checkout", "-q", "-b", "api-key")
    for node_file in sorted((work / "nodes").glob("*.yaml")):
        agent_cfg = root / "nodes" / node_file.stem / "agent.yaml"
        recipient = _run(
            env, [*cli("fleetkeeper-agent"), "identity", "--config", str(agent_cfg)], work
        ).strip()
        doc = yaml.safe_load(node_file.read_text())
        doc["ageRecipient"] = recipient
        node_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    note("each node's public age recipient goes into its node file (ageRecipient)")
    path, sha, size = build_reader(root / "artifacts")
    port = free_port()
    release = _reader_release(f"{artifacts.url}/{path.name}", sha, size, port)
    (work / "releases" / READER).mkdir(parents=True, exist_ok=True)
    (work / "releases" / READER / "1.0.0.yaml").write_text(yaml.safe_dump(release, sort_keys=False))
    fk = cli("fleetkeeper")
    _run(
        env,
        [*fk, "secret", "encrypt", "secret-reader/api-key", "--for-release", READER],
        work,
        api_key,
    )
    _run(env, [*fk, "secret", "check"], work)
    git.merge_pull_request(
        "api-key", "secret-reader 1.0.0 reads API_KEY", "Merge pull request #6: api-key"
    )
    approve("deploy/secret-reader-1.0.0")

    def healthy(status: Mapping[str, Any]) -> bool:
        rows = [r for r in status.get("releases") or [] if r.get("agent") == READER]
        return bool(rows) and rows[-1].get("phase") == "Succeeded"

    wait(f"{READER} 1.0.0 to be Succeeded", healthy)
    answer = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
    want = hashlib.sha256(api_key.encode()).hexdigest()
    if answer.split() != ["env", want, "file", want]:
        raise DemoFailed(f"the workload did not read the key: {answer!r} (want sha256 {want})")
    note(
        f"{NODE}'s workload read API_KEY (env) and $FLEETKEEPER_SECRETS_DIR/api-key (file): "
        f"both sha256 {want[:16]}..., the key's"
    )
    answers = [client.fleet(), client.audit(limit=1000)]
    where = [p for p in (root / "reconciler").rglob("*") if p.is_file()]
    where += sorted((root / "logs").glob("*.log"))
    leaks = [str(p) for p in where if api_key.encode() in p.read_bytes()]
    leaks += ["an API answer" for a in answers if api_key in str(a)]
    if leaks:
        raise DemoFailed(f"the API key appears in {leaks}")
    held = [
        p
        for p in (root / "reconciler").rglob("*")
        if p.is_file() and b"AGE-SECRET-KEY" in p.read_bytes()
    ]
    if held:
        raise DemoFailed(f"the reconciler holds an age identity: {held}")
    note(
        "checked: the key is in no reconciler file (its SQLite database included), no log and "
        "no API answer, and the reconciler holds no age identity: it only passed ciphertext"
    )
