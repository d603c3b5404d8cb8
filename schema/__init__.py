"""JSON Schemas of every fleetkeeper document, loaded with importlib.resources.

Both the reconciler and the agent import this package; it depends on nothing
but ``jsonschema`` (and its ``referencing`` library), and uses ``jsonschema-rs`` for
speed where it is installed.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

NAMES = (
    "common",
    "fleet",
    "node",
    "release",
    "model",
    "register",
    "register-response",
    "join-token-request",
    "join-token",
    "rollout-control-request",
    "desired-state",
    "signed-desired-state",
    "status-report",
    "fleet-status",
    "reconciler-config",
    "agent-config",
)

COMMON_ID = "urn:fleetkeeper:schema:common"

KIND_SCHEMAS = {"Fleet": "fleet", "Node": "node", "Release": "release", "Model": "model"}


@cache
def load(name: str) -> dict[str, Any]:
    """The schema document ``schema/<name>.schema.json``."""
    text = resources.files(__name__).joinpath(f"{name}.schema.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def bundled(name: str) -> dict[str, Any]:
    """``schema/<name>.schema.json`` made self-contained for tools that know nothing of
    fleetkeeper (check-jsonschema, editors): the common ``$defs`` it uses copied in and
    every ``urn:...common#`` reference made local. Its ``$id`` stays the stable
    ``urn:fleetkeeper:schema:<name>``; no reference leaves the document."""
    common = load("common")
    text = json.dumps(load(name))
    out: dict[str, Any] = json.loads(text.replace(f'"{COMMON_ID}#/', '"#/'))
    defs = out.setdefault("$defs", {})
    if name != "common" and COMMON_ID in text:
        for key, value in common["$defs"].items():
            if key in defs and defs[key] != value:
                raise ValueError(f"{name}.schema.json: $defs/{key} is also defined in common")
            defs[key] = copy.deepcopy(value)
    # A whole other document (the signed envelope wraps desired-state): embedded, bundled
    # itself, under $defs with its own $id, so its "#/..." references stay its own.
    for other in NAMES:
        urn = f"urn:fleetkeeper:schema:{other}"
        if other != name and f'"{urn}"' in text:
            out = json.loads(json.dumps(out).replace(f'"{urn}"', f'"#/$defs/{other}"'))
            defs = out["$defs"]
            defs[other] = bundled(other)
    if not defs:
        del out["$defs"]
    return out


@cache
def registry() -> Registry:
    resources_ = [
        (load(n)["$id"], Resource.from_contents(load(n), default_specification=DRAFT202012))
        for n in NAMES
    ]
    return Registry().with_resources(resources_)


@cache
def validator(name: str) -> Draft202012Validator:
    """A ready validator for ``name`` with cross-file ``$ref`` resolved and formats checked."""
    return Draft202012Validator(
        load(name),
        registry=registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


@cache
def fast_validator(name: str) -> Any:
    """The compiled jsonschema-rs validator for ``name``; None where it is not installed
    (an edge node may have only ``jsonschema``)."""
    try:
        import jsonschema_rs
    except ImportError:
        return None
    rs_registry = jsonschema_rs.Registry([(load(n)["$id"], load(n)) for n in NAMES])
    return jsonschema_rs.validator_for(load(name), registry=rs_registry)


def errors(name: str, document: object) -> list[str]:
    """Every violation of ``name`` in ``document`` as 'path: message' (empty: valid).

    A valid document (nearly every request body) is checked by jsonschema-rs alone, in
    compiled code; only an invalid one is checked again by ``jsonschema``, whose messages
    are the ones users and tests know. The schemas use no ``format``, so both agree.
    """
    fast = fast_validator(name)
    if fast is not None and fast.is_valid(document):
        return []
    out = []
    for err in sorted(validator(name).iter_errors(document), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in err.absolute_path) or "(document)"
        out.append(f"{where}: {err.message}")
    return out
