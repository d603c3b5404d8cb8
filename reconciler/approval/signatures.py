"""Signature verification against the reconciler's pinned keys: ssh-keygen and gpg.

Only exit codes and gpg's ``--status-fd`` lines are trusted, never human-readable text
(``git verify-tag`` prints "Good signature" even when no allowed principal matched).

- OpenSSH (git ``gpg.format=ssh``): ``ssh-keygen -Y find-principals`` names the principal
  of the allowed_signers file whose key made the signature, then ``ssh-keygen -Y verify
  -I <principal> -n git`` checks it, with ``-Overify-time`` set to the time the reconciler
  first observed the object, so that ``valid-after``/``valid-before`` are judged then.
- OpenPGP: ``gpg --verify`` in a GNUPGHOME owned by the reconciler (under its stateDir)
  into which only the configured keyring is imported; never the user's keyring. gpg's
  clock is set to the first observation (``--faked-system-time``), so key expiry is judged
  at that moment. A revocation counts whenever it was made (gpg applies it to every
  signature, which is also immune to backdating): retire a key by letting it expire.

Never at the committer or tagger date: the signer writes it, so a retired key could
approve anything by backdating it (git's own ``verify-commit`` trusts that date).

A verdict depends only on the object, the pinned keys and the observation time, so it is
cached by (object sha, digest of the keys, observation time).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fleetkeeper_common.gitobjects import split_tag_signature
from fleetkeeper_common.gpgstatus import import_succeeded, status_lines
from reconciler.approval.values import Signature
from reconciler.errors import CommandError

log = logging.getLogger(__name__)

SSH_NAMESPACE = "git"
_TIMEOUT = 30.0
_CACHE_MAX = 200_000
_cache: dict[tuple[str, str, int], Signature] = {}
_gpg_lock = threading.Lock()
_EMAIL = re.compile(r"<([^<>\s]+)>")
_BAD_STATUS = ("BADSIG", "ERRSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "NO_PUBKEY")


@dataclass(frozen=True)
class SignedObject:
    """The signed bytes of a commit or tag and the signature over them."""

    sha: str
    payload: bytes
    signature: bytes
    observed: int  # when the reconciler first saw it: the moment the key must have been valid


def split_tag(raw: bytes) -> tuple[bytes, bytes] | None:
    """(payload, signature) of a raw tag object, cut at the last ``-----BEGIN`` line (the
    agent cuts with the same code: ``fleetkeeper_common.gitobjects``)."""
    parts = split_tag_signature(raw)
    return None if parts is None else (parts.payload, parts.signature)


def signature_format(signature: bytes) -> str:
    if signature.startswith(b"-----BEGIN SSH SIGNATURE"):
        return "ssh"
    if signature.startswith((b"-----BEGIN PGP SIGNATURE", b"-----BEGIN PGP MESSAGE")):
        return "openpgp"
    return "unknown"


def _run(
    argv: list[str], stdin: bytes = b"", env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    try:
        proc = subprocess.run(
            argv, input=stdin, capture_output=True, timeout=_TIMEOUT, env=env, check=False
        )
    except FileNotFoundError as exc:
        raise CommandError(argv, 127, f"{argv[0]} not found; install it ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandError(argv, -1, f"timed out after {_TIMEOUT} s") from exc
    return (
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def _ssh_time(t: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(t)) + "Z"


class Verifier:
    """Verifies signatures against an allowed_signers file and an OpenPGP keyring."""

    def __init__(
        self, allowed_signers: Path | None, gpg_keyring: Path | None, gnupg_home: Path
    ) -> None:
        self.allowed_signers = allowed_signers
        self.gpg_keyring = gpg_keyring
        self.gnupg_home = gnupg_home
        h = hashlib.sha256()
        for p in (allowed_signers, gpg_keyring):
            h.update(b"\0")
            if p is not None:
                try:
                    h.update(p.read_bytes())
                except OSError as exc:
                    log.warning("cannot read pinned keys %s: %s", p, exc.strerror)
                    h.update(b"unreadable")
        self.digest = h.hexdigest()
        self._gpg_ready = False

    def verify(self, obj: SignedObject) -> Signature:
        key = (obj.sha, self.digest, obj.observed)
        hit = _cache.get(key)
        if hit is not None:
            return hit
        fmt = signature_format(obj.signature)
        if fmt == "ssh":
            sig = self._verify_ssh(obj)
        elif fmt == "openpgp":
            sig = self._verify_gpg(obj)
        else:
            sig = Signature(format="unknown", valid=False, detail="unknown signature format")
        if len(_cache) >= _CACHE_MAX:
            _cache.clear()
        _cache[key] = sig
        return sig

    # -- OpenSSH ---------------------------------------------------------------------------

    def _verify_ssh(self, obj: SignedObject) -> Signature:
        if self.allowed_signers is None or not self.allowed_signers.is_file():
            return Signature("ssh", False, detail="no allowed_signers file is configured")
        when = f"-Overify-time={_ssh_time(obj.observed)}"
        allowed = str(self.allowed_signers)
        with tempfile.TemporaryDirectory(prefix="fk-sig-") as tmp:
            sig_file = Path(tmp) / "sig"
            sig_file.write_bytes(obj.signature)
            code, out, _ = _run(
                ["ssh-keygen", "-Y", "find-principals", "-s", str(sig_file), "-f", allowed, when]
            )
            principals = [p.strip() for p in out.splitlines() if p.strip()] if code == 0 else []
            if not principals:
                return Signature(
                    "ssh", False, detail="signing key is not in allowed_signers (or not valid then)"
                )
            for principal in principals:
                code, out, _ = _run(
                    [
                        "ssh-keygen",
                        "-Y",
                        "verify",
                        "-f",
                        allowed,
                        "-I",
                        principal,
                        "-n",
                        SSH_NAMESPACE,
                        "-s",
                        str(sig_file),
                        when,
                    ],
                    stdin=obj.payload,
                )
                if code == 0:
                    fp = re.search(r"SHA256:[A-Za-z0-9+/=]+", out)
                    return Signature("ssh", True, signer=principal, key=fp[0] if fp else None)
        return Signature("ssh", False, detail="signature does not verify for an allowed signer")

    # -- OpenPGP ---------------------------------------------------------------------------

    def _gpg_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GNUPGHOME"] = str(self.gnupg_home)
        env["LC_ALL"] = "C"
        return env

    def _prepare_gpg(self) -> bool:
        """Import the pinned keyring into our own GNUPGHOME when it changed."""
        if self._gpg_ready:
            return True
        if self.gpg_keyring is None or not self.gpg_keyring.is_file():
            return False
        with _gpg_lock:
            stamp = self.gnupg_home / "fleetkeeper-keyring.sha256"
            if stamp.is_file() and stamp.read_text() == self.digest:
                self._gpg_ready = True
                return True
            # Re-create from scratch: a key removed from the pinned keyring must stop counting.
            shutil.rmtree(self.gnupg_home, ignore_errors=True)
            self.gnupg_home.mkdir(parents=True, mode=0o700)
            argv = ["gpg", "--batch", "--no-tty", "--no-autostart", "--status-fd", "1", "--import"]
            code, out, err = _run([*argv, str(self.gpg_keyring)], env=self._gpg_env())
            if not import_succeeded(code, out):
                raise CommandError(argv, code, err)
            stamp.write_text(self.digest)
            self._gpg_ready = True
            return True

    def _verify_gpg(self, obj: SignedObject) -> Signature:
        if not self._prepare_gpg():
            return Signature("openpgp", False, detail="no OpenPGP keyring is configured")
        with tempfile.TemporaryDirectory(prefix="fk-sig-") as tmp:
            sig_file = Path(tmp) / "sig.asc"
            sig_file.write_bytes(obj.signature)
            code, out, _ = _run(
                [
                    "gpg",
                    "--batch",
                    "--no-tty",
                    "--no-autostart",
                    "--trust-model",
                    "always",
                    "--status-fd",
                    "1",
                    "--faked-system-time",
                    f"{obj.observed}!",  # '!': the clock stands still at that moment
                    "--verify",
                    str(sig_file),
                    "-",
                ],
                stdin=obj.payload,
                env=self._gpg_env(),
            )
        status = status_lines(out)
        keywords = {s[0] for s in status if s}
        bad = sorted(keywords & set(_BAD_STATUS))
        valid = [s for s in status if s and s[0] == "VALIDSIG"]
        good = [s for s in status if s and s[0] == "GOODSIG"]
        if code != 0 or bad or not valid or not good:
            why = ", ".join(bad) or f"gpg exit {code}"
            return Signature("openpgp", False, detail=f"OpenPGP signature not valid ({why})")
        primary = valid[0][-1] if len(valid[0]) >= 11 else valid[0][1]
        uid = " ".join(good[0][2:])
        email = _EMAIL.search(uid)
        return Signature("openpgp", True, signer=email[1] if email else primary, key=primary)
