"""The agent's own check of an approver's signature: ``ssh-keygen -Y verify`` and ``gpg``.

``approvers: {allowedSigners, gpgKeyring}`` in the agent config pins the keys (the same
formats as the reconciler's ``approval`` block). Only exit codes and gpg's ``--status-fd``
lines are trusted, never human-readable text. The keys are judged at the agent's own
clock (the reconciler's first-observation time is the reconciler's word, not evidence):
an approver key that expires, or is removed from these files, stops approving on this
node from then on. OpenPGP runs in a GNUPGHOME of the agent's own under ``stateDir``
into which only the pinned keyring is imported.

A verdict depends on the signed bytes and the pinned keys, so it is cached by their digest
for a few minutes (a re-signed refresh of the same document runs no process).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shlex
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError
from fleetkeeper_common.gitobjects import Signed
from fleetkeeper_common.gpgstatus import import_succeeded, status_lines

SSH_NAMESPACE = "git"  # what git signs with (gpg.format=ssh)
_TIMEOUT = 30.0
_CACHE_SECONDS = 300.0
_BAD_STATUS = ("BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY")
_cache: dict[str, tuple[float, str | None, str]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Verdict:
    signer: str | None  # the allowed principal or OpenPGP key; None: not valid
    detail: str = ""


@dataclass(frozen=True)
class ApproverKeys:
    allowed_signers: Path | None
    gpg_keyring: Path | None

    def digest(self) -> str:
        h = hashlib.sha256()
        for p in (self.allowed_signers, self.gpg_keyring):
            h.update(b"\0")
            if p is not None:
                try:
                    h.update(p.read_bytes())
                except OSError as exc:
                    raise ConfigError(f"approvers: cannot read {p}: {exc.strerror}") from exc
        return h.hexdigest()


def _run(argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=_TIMEOUT, env=env, check=False
        )
    except FileNotFoundError:
        return 127, f"{argv[0]} not found"
    except subprocess.TimeoutExpired:
        return -1, f"{argv[0]} timed out after {_TIMEOUT} s"
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def verify(signed: Signed, keys: ApproverKeys, gnupg_home: Path) -> Verdict:
    """Who of the pinned approvers signed ``signed`` (``Verdict.signer`` None: nobody)."""
    digest = keys.digest()
    key = hashlib.sha256(digest.encode() + signed.payload + b"\0" + signed.signature).hexdigest()
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            return Verdict(hit[1], hit[2])
    if signed.signature.startswith(b"-----BEGIN SSH SIGNATURE"):
        verdict = _verify_ssh(signed, keys.allowed_signers)
    elif signed.signature.startswith(b"-----BEGIN PGP SIGNATURE"):
        verdict = _verify_gpg(signed, keys.gpg_keyring, gnupg_home, digest)
    else:
        verdict = Verdict(None, "unknown signature format")
    with _lock:
        if len(_cache) > 4096:
            _cache.clear()
        _cache[key] = (now, verdict.signer, verdict.detail)
    return verdict


def _sig_key(signature: bytes) -> bytes | None:
    """The public key blob inside an armored SSHSIG (PROTOCOL.sshsig), None if malformed."""
    lines = signature.decode("ascii", "replace").strip().splitlines()
    try:
        blob = base64.b64decode("".join(lines[1:-1]))
    except binascii.Error:
        return None
    if not blob.startswith(b"SSHSIG") or len(blob) < 14:
        return None
    size = struct.unpack(">I", blob[10:14])[0]
    return blob[14 : 14 + size] if len(blob) >= 14 + size else None


def _listed_principals(allowed: Path, key: bytes) -> list[str]:
    """Principals of the allowed_signers lines whose key is exactly ``key`` (literal names
    only; a pattern or a cert-authority line is left to ``ssh-keygen -Y find-principals``).
    ssh-keygen -Y verify still applies every option of the line (namespaces, validity)."""
    out: list[str] = []
    for line in allowed.read_text("utf-8", "replace").splitlines():
        fields = shlex.split(line, comments=True, posix=True) if line.strip() else []
        for i, f in enumerate(fields[1:-1], 1):
            if f.startswith(("ssh-", "ecdsa-", "sk-")):
                try:
                    blob = base64.b64decode(fields[i + 1])
                except binascii.Error:
                    break
                if blob == key:
                    out += [p for p in fields[0].split(",") if not set(p) & set("*?!")]
                break
    return out


def _verify_ssh(signed: Signed, allowed: Path | None) -> Verdict:
    if allowed is None:
        return Verdict(None, "SSH signature, but approvers.allowedSigners is not set")
    with tempfile.TemporaryDirectory(prefix="fk-approver-") as tmp:
        sig = Path(tmp) / "sig"
        sig.write_bytes(signed.signature)
        # one process instead of two when the key is listed as such (the usual case)
        key = _sig_key(signed.signature)
        principals = _listed_principals(allowed, key) if key is not None else []
        if not principals:
            code, out = _run(
                ["ssh-keygen", "-Y", "find-principals", "-s", str(sig), "-f", str(allowed)]
            )
            principals = [p.strip() for p in out.splitlines() if p.strip()] if code == 0 else []
        if not principals:
            return Verdict(None, "signing key is not in approvers.allowedSigners (or expired)")
        for principal in principals:
            argv = ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", principal]
            code, _ = _run([*argv, "-n", SSH_NAMESPACE, "-s", str(sig)], stdin=signed.payload)
            if code == 0:
                return Verdict(principal)
    return Verdict(None, "the SSH signature does not verify for an allowed approver")


def _gpg_home(keyring: Path, home: Path, digest: str) -> dict[str, str]:
    """GNUPGHOME holding exactly the pinned keyring (re-made when the keyring changed)."""
    env = {**os.environ, "GNUPGHOME": str(home), "LC_ALL": "C"}
    stamp = home / "fleetkeeper-keyring.sha256"
    with _lock:
        if stamp.is_file() and stamp.read_text() == digest:
            return env
        shutil.rmtree(home, ignore_errors=True)  # a removed key must stop counting
        home.mkdir(parents=True, mode=0o700)
        argv = ["gpg", "--batch", "--no-tty", "--no-autostart", "--status-fd", "1", "--import"]
        code, out = _run([*argv, str(keyring)], env=env)
        if not import_succeeded(code, out):
            raise ConfigError(f"approvers.gpgKeyring {keyring}: gpg --import failed ({code})")
        stamp.write_text(digest)
    return env


def _verify_gpg(signed: Signed, keyring: Path | None, home: Path, digest: str) -> Verdict:
    if keyring is None:
        return Verdict(None, "OpenPGP signature, but approvers.gpgKeyring is not set")
    env = _gpg_home(keyring, home, digest)
    with tempfile.TemporaryDirectory(prefix="fk-approver-") as tmp:
        sig = Path(tmp) / "sig.asc"
        sig.write_bytes(signed.signature)
        argv = ["gpg", "--batch", "--no-tty", "--no-autostart", "--trust-model", "always"]
        argv += ["--status-fd", "1"]
        code, out = _run([*argv, "--verify", str(sig), "-"], stdin=signed.payload, env=env)
    status = status_lines(out)
    bad = sorted({s[0] for s in status if s} & set(_BAD_STATUS))
    valid = [s for s in status if s and s[0] == "VALIDSIG"]
    if code != 0 or bad or not valid:
        why = ", ".join(bad) or f"gpg exit {code}"
        return Verdict(None, f"OpenPGP signature not valid for approvers.gpgKeyring ({why})")
    return Verdict(valid[0][-1] if len(valid[0]) >= 11 else valid[0][1])
