"""A workload's secrets on the node: decrypted with the node's own age identity, handed to
the workload, never written anywhere else (issue 17; docs/security.md).

The desired document carries each secret as age ciphertext (``secrets: [{name, from, as,
age}]``). Before anything is staged the agent checks it can open every one
(``check_secrets``): a node that is not a recipient fails with ``cannot decrypt secrets/...:
this node is not a recipient`` and keeps running what it ran. At launch (``materialize``):

    <installRoot>/<name>/secrets/<version>/       FLEETKEEPER_SECRETS_DIR: 0700, one 0600
                                                  file per ``as: file`` secret, owned by
                                                  run.user when there is one
    <installRoot>/<name>/secrets/<version>.env    the ``as: env`` values (JSON, 0600, the
                                                  agent's): read when the process is
                                                  spawned, so the process record in the
                                                  state directory holds its path, not them
    <installRoot>/<name>/secrets/<version>.digest which ciphertexts these came from

A directory is written whole and renamed into place, so a workload never sees half of a
rotation. Plain text never reaches a log line, a report, the journal or the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import isolation
from agent.errors import WorkloadError
from agent.state import fsync_dir, write_atomic
from fleetkeeper_common.age import AgeError, Identity, NotARecipient, decrypt
from fleetkeeper_common.digests import secrets_digest

SECRETS_DIR_ENV = "FLEETKEEPER_SECRETS_DIR"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class SecretError(WorkloadError):
    """A secret of the desired document cannot be opened on this node."""

    reason = "SecretUnavailable"


@dataclass(frozen=True)
class Sealed:
    name: str
    source: str  # secrets/....age in the fleet repo (for messages)
    as_: str  # "env" | "file"
    age: str  # the ciphertext, armored


def sealed(doc: Mapping[str, Any]) -> tuple[Sealed, ...]:
    out = []
    for s in doc.get("secrets") or ():
        if isinstance(s, Mapping):
            out.append(
                Sealed(
                    str(s.get("name")),
                    str(s.get("from")),
                    "file" if s.get("as") == "file" else "env",
                    str(s.get("age") or ""),
                )
            )
    return tuple(out)


def digest(doc: Mapping[str, Any]) -> str:
    """Which ciphertexts (and placements) ``doc`` asks for: a rotation changes it; the
    reconciler computes the same from the release (``fleetkeeper_common.digests``)."""
    return secrets_digest((s.name, s.as_, s.source, s.age) for s in sealed(doc)) or ""


def in_use(workload_dir: Path, version: str) -> str | None:
    """The digest of the secrets ``version`` was last started with (None: none)."""
    try:
        return (secrets_root(workload_dir) / f"{version}.digest").read_text().strip() or None
    except OSError:
        return None


def _open(s: Sealed, identity: Identity | None) -> bytes:
    if identity is None:
        raise SecretError(f"cannot decrypt {s.source}: this node has no age identity")
    try:
        return decrypt(s.age.encode(), identity)
    except NotARecipient as exc:
        raise SecretError(
            f"cannot decrypt {s.source}: this node is not a recipient "
            f"(re-encrypt it for {identity.recipient})"
        ) from exc
    except AgeError as exc:
        raise SecretError(f"cannot decrypt {s.source}: {exc}") from exc


def check_secrets(doc: Mapping[str, Any], identity: Identity | None) -> None:
    """Raise SecretError unless every secret of ``doc`` opens with ``identity``."""
    for s in sealed(doc):
        _open(s, identity)


def secrets_root(workload_dir: Path) -> Path:
    return workload_dir / "secrets"


def is_current(workload_dir: Path, version: str, doc: Mapping[str, Any]) -> bool:
    """Whether the secrets laid out for ``version`` came from ``doc``'s ciphertexts."""
    if not sealed(doc):
        return True
    try:
        written = (secrets_root(workload_dir) / f"{version}.digest").read_text().strip()
    except OSError:
        return False
    return written == digest(doc)


def materialize(
    workload_dir: Path, version: str, doc: Mapping[str, Any], identity: Identity | None
) -> tuple[dict[str, str], Path | None]:
    """Lay out ``doc``'s secrets for ``version``; the extra environment for the workload
    (``FLEETKEEPER_SECRETS_DIR``) and the file of its ``as: env`` values (None: none)."""
    found = sealed(doc)
    if not found:
        return {}, None
    opened = [(s, _open(s, identity)) for s in found]
    try:
        return _lay_out(workload_dir, version, doc, opened)
    except OSError as exc:  # e.g. chown to run.user without the right to
        raise SecretError(
            f"{doc.get('name')}: cannot write its secrets under {secrets_root(workload_dir)}: "
            f"{exc.strerror or exc}"
        ) from exc


def _lay_out(
    workload_dir: Path, version: str, doc: Mapping[str, Any], opened: list[tuple[Sealed, bytes]]
) -> tuple[dict[str, str], Path | None]:
    root = secrets_root(workload_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # run.user must reach its own directory below, list nothing
    name = str(doc.get("name"))
    user = isolation.effective_user(doc, None)
    owner = isolation.lookup_user(user) if user else None
    target = root / version
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=root))
    try:
        for s, plain in opened:
            if s.as_ == "file":
                if not _FILE_NAME.match(s.name):  # the schema says so; never trust a path
                    raise SecretError(f"secret name {s.name!r} is not a plain file name")
                path = staging / s.name
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(plain)
                    fh.flush()
                    os.fsync(fh.fileno())
                if owner is not None:
                    os.chown(path, owner.uid, owner.gid)
        os.chmod(staging, 0o700)
        if owner is not None:
            os.chown(staging, owner.uid, owner.gid)
        _replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    env_values = {}
    for s, plain in opened:
        if s.as_ == "env":
            try:
                env_values[s.name] = plain.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError as exc:
                raise SecretError(
                    f"{name}: secret {s.name} ({s.source}) is not UTF-8 text and cannot be an "
                    "environment variable: use as: file"
                ) from exc
    env_file = root / f"{version}.env"
    write_atomic(env_file, json.dumps(env_values).encode(), mode=0o600)
    write_atomic(root / f"{version}.digest", digest(doc).encode(), mode=0o600)
    return {SECRETS_DIR_ENV: str(target)}, env_file


def _replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``, replacing what is there in one rename."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)
    fsync_dir(target.parent)


def read_env_file(path: Path) -> dict[str, str]:
    """The ``as: env`` values for a spawn; {} when the file is gone (the version pruned)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def prune(workload_dir: Path, keep: set[str]) -> None:
    """Remove the secrets of versions no longer installed."""
    root = secrets_root(workload_dir)
    if not root.is_dir():
        return
    for entry in root.iterdir():
        version = entry.name.removesuffix(".env").removesuffix(".digest")
        if version in keep:
            continue  # (a name starting with "." is a leftover of an interrupted write)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
