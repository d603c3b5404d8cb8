"""Rules for age secrets (issue 17; ``fleetkeeper secret check``, also run by validate).

``recipients``: every ``ageRecipient`` of a node file and every
``secrets.operatorRecipients`` entry of fleet.yaml must parse as an age X25519 recipient
(a pattern cannot check bech32's checksum), and a release names each secret once.

``secret_files(files)``: given the revision's ``secrets/`` files, every secret a release
or model names must exist, be an age file under the size cap, and have been encrypted to
every node the release targets. An X25519 stanza does not reveal its recipient, so this is
judged against ``secrets/<name>.recipients`` (see ``reconciler.secret_files``), and that
list against the number of stanzas the file really has.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from fleetkeeper_common.age import recipient_problem
from reconciler.secret_files import (
    MAX_SECRET_BYTES,
    is_secret_file,
    parse_recipients,
    recipients_path,
    x25519_stanzas,
)
from reconciler.spec import Deployable
from reconciler.validate.loader import LoadedFile
from reconciler.validate.rules import Rule, RuleContext, Scope, violation
from reconciler.validate.violations import Violation


def recipients(ctx: RuleContext) -> Iterator[Violation]:
    """ageRecipient and operatorRecipients parse; secret names are unique per release."""
    for path, loaded in ctx.files.items():
        doc = loaded.value
        kind = doc.get("kind")
        if kind == "Node" and isinstance(doc.get("ageRecipient"), str):
            problem = recipient_problem(doc["ageRecipient"])
            if problem is not None:
                yield violation(
                    loaded,
                    path,
                    ("ageRecipient",),
                    f"ageRecipient {doc['ageRecipient']!r} is not an age X25519 recipient "
                    f"({problem}); copy it from `fleetkeeper-agent identity --config FILE` "
                    "on the node",
                )
        elif kind == "Fleet":
            block = doc.get("secrets")
            listed = block.get("operatorRecipients") if isinstance(block, dict) else None
            for i, r in enumerate(listed if isinstance(listed, list) else []):
                problem = recipient_problem(str(r))
                if problem is not None:
                    yield violation(
                        loaded,
                        path,
                        ("secrets", "operatorRecipients", i),
                        f"operator recipient {r!r} is not an age X25519 recipient ({problem})",
                    )
        elif kind in ("Release", "Model"):
            seen: set[str] = set()
            for i, item in enumerate(doc.get("secrets") or []):
                name = item.get("name") if isinstance(item, dict) else None
                if name in seen:
                    yield violation(
                        loaded, path, ("secrets", i, "name"), f"secret {name!r} is named twice"
                    )
                if isinstance(name, str):
                    seen.add(name)


def secret_files(files: Mapping[str, bytes]) -> Rule:
    """The rule that judges releases' secrets against ``files`` (``secrets/`` of the same
    revision; other paths are ignored)."""
    found = {p: data for p, data in files.items() if is_secret_file(p)}

    def rule(ctx: RuleContext) -> Iterator[Violation]:
        scope = ctx.scope
        for d in ctx.spec.deployables:
            if d.secrets:
                yield from _judge(scope, d, ctx.files[d.path], found)

    return rule


def _judge(
    scope: Scope, d: Deployable, loaded: LoadedFile, files: Mapping[str, bytes]
) -> Iterator[Violation]:
    for i, s in enumerate(d.secrets):
        at = ("secrets", i, "from")
        hint = f"fleetkeeper secret encrypt {s.source[len('secrets/') : -len('.age')]}"
        data = files.get(s.source)
        if data is None:
            yield violation(
                loaded,
                d.path,
                at,
                f"secret {s.name}: {s.source} does not exist (write it with `{hint} "
                f"--for-release {d.name}`, from the plain text on stdin)",
            )
            continue
        stanzas = x25519_stanzas(data)
        if stanzas is None:
            yield violation(loaded, d.path, at, f"secret {s.name}: {s.source} is not an age file")
            continue
        if len(data) > MAX_SECRET_BYTES:
            yield violation(
                loaded,
                d.path,
                at,
                f"secret {s.name}: {s.source} is {len(data)} bytes, over the "
                f"{MAX_SECRET_BYTES}-byte cap (it travels in every desired document)",
            )
        listed_path = recipients_path(s.source)
        listed = files.get(listed_path)
        if listed is None:
            yield violation(
                loaded,
                d.path,
                at,
                f"secret {s.name}: {listed_path} is missing, so whom {s.source} is encrypted "
                f"to cannot be checked (re-encrypt with `{hint} --for-release {d.name}`)",
            )
            continue
        keys = {r.key for r in parse_recipients(listed.decode("utf-8", "replace"))}
        if len(keys) != stanzas:
            yield violation(
                loaded,
                d.path,
                at,
                f"secret {s.name}: {listed_path} lists {len(keys)} recipient(s) but "
                f"{s.source} is encrypted to {stanzas}: the list is stale; re-encrypt "
                f"with `{hint} --for-release {d.name}`",
            )
        without = sorted(n.name for n in scope.targeted(d) if n.age_recipient is None)
        if without:
            yield violation(
                loaded,
                d.path,
                at,
                f"secret {s.name}: targeted node(s) {', '.join(without)} have no ageRecipient "
                "in their node file (`fleetkeeper-agent identity --config FILE` prints it)",
                related=[f"nodes/{n}.yaml" for n in without],
            )
        missing = sorted(
            n.name
            for n in scope.targeted(d)
            if n.age_recipient is not None and n.age_recipient not in keys
        )
        if missing:
            yield violation(
                loaded,
                d.path,
                at,
                f"secret {s.name}: {s.source} is not encrypted to targeted node(s) "
                f"{', '.join(missing)}: re-encrypt with `{hint} --for-release {d.name}`",
                related=[f"nodes/{n}.yaml" for n in missing],
            )


RULES: list[Rule] = [recipients]
