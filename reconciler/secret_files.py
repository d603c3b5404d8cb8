"""Secrets in the fleet repo (issue 17): ``secrets/<name>.age`` and its recipients list.

``secrets/<name>.age`` is age ciphertext (ASCII-armored) encrypted to the ``ageRecipient``
of every node that needs it, plus the operators' recipients of ``fleet.yaml``
(``secrets: {operatorRecipients: [...]}``). An age X25519 stanza does not say whom it is
for, so ``secrets/<name>.recipients`` records the list it was encrypted to, one
``age1... # who`` line each, written by ``fleetkeeper secret encrypt``; ``secret check``
judges against it, and against the number of X25519 stanzas the file really has.

Pure: bytes in, values out. The reconciler never holds a key that opens these files.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from fleetkeeper_common.rendering import ciphertext_text
from reconciler.plan.select import NodeFacts, latest_versions, target_nodes
from reconciler.spec import Deployable, FleetSpec

SECRETS_DIR = "secrets/"
AGE_SUFFIX = ".age"
RECIPIENTS_SUFFIX = ".recipients"
MAX_SECRET_BYTES = 64 * 1024  # API keys and certificates; the desired document carries it
_ARMOR_BEGIN = "-----BEGIN AGE ENCRYPTED FILE-----"
_ARMOR_END = "-----END AGE ENCRYPTED FILE-----"


def is_secret_file(path: str) -> bool:
    """A file of ``secrets/`` the reconciler reads (ciphertext or its recipients list)."""
    return path.startswith(SECRETS_DIR) and path.endswith((AGE_SUFFIX, RECIPIENTS_SUFFIX))


def recipients_path(age_path: str) -> str:
    stem = age_path[: -len(AGE_SUFFIX)] if age_path.endswith(AGE_SUFFIX) else age_path
    return stem + RECIPIENTS_SUFFIX


def secret_path(name: str) -> str:
    """``secrets/<name>.age`` for ``fleetkeeper secret encrypt NAME`` (NAME may hold '/')."""
    return f"{SECRETS_DIR}{name}{AGE_SUFFIX}"


@dataclass(frozen=True)
class Recipient:
    key: str  # age1...
    who: str  # "node gpu-1", "operator", ...: the comment of its line


def parse_recipients(text: str) -> tuple[Recipient, ...]:
    """``age1... # who`` lines; blank lines and lines starting with '#' are skipped."""
    out = []
    for line in text.splitlines():
        body, _, comment = line.partition("#")
        key = body.strip()
        if key:
            out.append(Recipient(key, comment.strip()))
    return tuple(out)


def render_recipients(recipients: Iterable[Recipient]) -> str:
    head = "# written by `fleetkeeper secret encrypt`: who this file is encrypted to\n"
    return head + "".join(f"{r.key} # {r.who}\n" for r in recipients)


def _binary(data: bytes) -> bytes | None:
    """The binary age file of ``data`` (armored or not); None when it is neither."""
    text = data.decode("ascii", "replace").strip()
    if text.startswith(_ARMOR_BEGIN):
        body = text[len(_ARMOR_BEGIN) :]
        end = body.find(_ARMOR_END)
        if end < 0:
            return None
        try:
            return base64.b64decode("".join(body[:end].split()), validate=True)
        except (binascii.Error, ValueError):
            return None
    return data if data.startswith(b"age-encryption.org/v1\n") else None


def x25519_stanzas(data: bytes) -> int | None:
    """How many X25519 recipient stanzas the age header holds; None: not an age file."""
    raw = _binary(data)
    if raw is None:
        return None
    header, sep, _ = raw.partition(b"\n---")
    if not sep:
        return None
    return sum(1 for line in header.split(b"\n") if line.startswith(b"-> X25519 "))


def attach_ciphertexts(spec: FleetSpec, files: Mapping[str, bytes]) -> FleetSpec:
    """``spec`` with every secret's ciphertext filled in from ``files`` (the revision's
    ``secrets/`` files). Validation (``validate.secret_rules``) has refused a revision
    whose secret file is missing or not age; such a secret is left empty here."""
    if not any(d.secrets for d in spec.deployables):
        return spec

    def filled(d: Deployable) -> Deployable:
        if not d.secrets:
            return d
        refs = tuple(
            replace(s, ciphertext=ciphertext_text(files.get(s.source, b""))) for s in d.secrets
        )
        return replace(d, secrets=refs)

    return replace(spec, deployables=tuple(filled(d) for d in spec.deployables))


@dataclass(frozen=True)
class Audience:
    """Whom ``fleetkeeper secret encrypt`` encrypts to: the chosen nodes' recipients and
    the operators'; ``without`` names chosen nodes that have no ``ageRecipient``."""

    recipients: tuple[Recipient, ...]
    nodes: tuple[str, ...]
    without: tuple[str, ...]


def audience(
    spec: FleetSpec,
    *,
    release: str | None = None,
    nodes: Iterable[str] = (),
    roles: Iterable[str] = (),
) -> Audience:
    """The nodes the latest version of ``release`` targets, or the named nodes, or the
    nodes with one of ``roles`` (declared nodes: those with a file in nodes/)."""
    facts = {n: NodeFacts.from_spec(s) for n, s in spec.nodes.items()}
    if release is not None:
        d = latest_versions(spec).get(release)
        if d is None:
            raise KeyError(f"no release or model named {release!r} in releases/ or models/")
        chosen = target_nodes(d, facts)
    else:
        names, wanted = set(nodes), set(roles)
        unknown = sorted(names - set(facts))
        if unknown:
            raise KeyError(f"no node file nodes/{unknown[0]}.yaml")
        chosen = [n for n, f in facts.items() if n in names or wanted & set(f.roles)]
    out = [
        Recipient(str(facts[n].age_recipient), f"node {n}")
        for n in sorted(chosen)
        if facts[n].age_recipient is not None
    ]
    out += [Recipient(r, "operator") for r in spec.fleet.operator_recipients]
    without = tuple(sorted(n for n in chosen if facts[n].age_recipient is None))
    return Audience(tuple(out), tuple(sorted(chosen)), without)
