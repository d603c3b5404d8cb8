"""JSON Schema checks of one parsed fleet file, each error placed at its YAML node.

The schemas are ``schema/<kind>.schema.json`` (loaded by the ``schema`` package through
importlib.resources). ``jsonschema-rs`` validates them (~50x faster than ``jsonschema``,
which remains the fallback); every error's instance path is mapped back to a line and
column through ``LoadedFile.locate``, and its message rewritten for people: the unknown
field with a "did you mean", the expected format from the schema's ``description``.

Pure: no I/O beyond reading the packaged schemas once.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import schema as schemas
from reconciler.validate.loader import LoadedFile
from reconciler.validate.violations import Violation

KIND_SCHEMAS = {"Fleet": "fleet", "Node": "node", "Release": "release", "Model": "model"}
_FOLDER_KIND = {"nodes": "Node", "releases": "Release", "models": "Model"}


def expected_kind(path: str) -> str | None:
    """The kind a fleet file must hold, from where it lives."""
    if path == "fleet.yaml":
        return "Fleet"
    return _FOLDER_KIND.get(path.split("/", 1)[0])


@dataclass(frozen=True)
class SchemaError:
    """A schema violation, independent of the validator library that found it."""

    at: tuple[str | int, ...]  # JSON path of the offending value
    keyword: str  # 'type', 'required', 'additionalProperties', 'pattern', ...
    message: str  # the library's own message
    location: str  # absolute keyword location: '<schema $id>#/json/pointer/keyword'
    details: dict[str, Any]


class _Engine:
    """One compiled validator per kind; jsonschema-rs when installed, else jsonschema."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._rs: Any = None
        self._py: Any = None
        try:
            import jsonschema_rs
        except ImportError:  # pragma: no cover - jsonschema-rs is a dependency
            self._py = schemas.validator(name)
        else:
            registry = jsonschema_rs.Registry(
                [(schemas.load(n)["$id"], schemas.load(n)) for n in ("common", name)]
            )
            self._rs = jsonschema_rs.validator_for(schemas.load(name), registry=registry)

    def errors(self, document: object) -> Iterator[SchemaError]:
        if self._rs is not None:
            if self._rs.is_valid(document):
                return
            for e in self._rs.iter_errors(document):
                kind = e.kind
                yield SchemaError(
                    at=tuple(e.instance_path),
                    keyword=_rs_keyword(type(kind).__name__),
                    message=e.message,
                    location=e.absolute_keyword_location or "",
                    details=kind.as_dict() if hasattr(kind, "as_dict") else {},
                )
            return
        for err in self._py.iter_errors(document):  # pragma: no cover - fallback
            details: dict[str, Any] = {}
            if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                allowed = err.schema.get("properties", {})
                details["unexpected"] = [k for k in err.instance if k not in allowed]
            if err.validator == "required":
                details["property"] = str(err.message).split("'")[1]
            yield SchemaError(
                at=tuple(err.absolute_path),
                keyword=str(err.validator),
                message=err.message,
                location=f"{err.schema.get('$id', '')}#/{'/'.join(map(str, err.schema_path))}",
                details=details,
            )


_RS_KEYWORDS = {
    "AdditionalProperties": "additionalProperties",
    "AnyOf": "anyOf",
    "Constant": "const",
    "Enum": "enum",
    "OneOfNotValid": "oneOf",
    "OneOfMultipleValid": "oneOf",
    "Required": "required",
    "Type": "type",
    "Pattern": "pattern",
    "UniqueItems": "uniqueItems",
}


def _rs_keyword(kind_name: str) -> str:
    return _RS_KEYWORDS.get(kind_name, kind_name[:1].lower() + kind_name[1:])


@cache
def _engine(name: str) -> _Engine:
    return _Engine(name)


def _subschema(location: str) -> dict[str, Any]:
    """The schema object holding the failing keyword, from its absolute location."""
    base, _, pointer = location.partition("#")
    name = base.rsplit(":", 1)[-1] if base.startswith("urn:fleetkeeper:schema:") else ""
    if name not in schemas.NAMES:
        return {}
    node: Any = schemas.load(name)
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/") if p]
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.get(part, {})
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return {}
    return node if isinstance(node, dict) else {}


def _allowed_fields(location: str) -> list[str]:
    props = _subschema(location).get("properties", {})
    return sorted(props) if isinstance(props, dict) else []


def field_name(at: Sequence[str | int]) -> str:
    """``artifacts[0].sha256`` for the JSON path ('artifacts', 0, 'sha256')."""
    out = ""
    for step in at:
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            out += f".{step}" if out else str(step)
    return out or "document"


def _show(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _value_at(document: object, at: Sequence[str | int]) -> object:
    node = document
    for step in at:
        if isinstance(node, dict):
            node = node.get(step)
        elif isinstance(node, list) and isinstance(step, int) and step < len(node):
            node = node[step]
        else:
            return None
    return node


_JSON_TYPE = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "sequence",
    dict: "mapping",
    type(None): "null",
}


def _type_name(t: str) -> str:
    return {"object": "a mapping", "array": "a sequence", "integer": "an integer"}.get(t, f"a {t}")


def _message(
    err: SchemaError, doc: object, path: str
) -> list[tuple[tuple[str | int, ...], bool, str]]:
    """(JSON path to point at, point at the key?, message) for one schema error."""
    name = field_name(err.at)
    value = _value_at(doc, err.at)
    sub = _subschema(err.location)
    hint = sub.get("description")
    if err.keyword == "additionalProperties":
        allowed = _allowed_fields(err.location)
        out = []
        for key in err.details.get("unexpected", []):
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            where = f" in {name}" if err.at else ""
            tip = f"; did you mean {close[0]!r}?" if close else ""
            listing = f" (allowed: {', '.join(allowed)})" if allowed and not close else ""
            out.append(((*err.at, key), True, f"unknown field {key!r}{where}{tip}{listing}"))
        return out
    if err.keyword == "type":
        expected = sub.get("type", "")
        types = expected if isinstance(expected, list) else [expected]
        got = _JSON_TYPE.get(type(value), type(value).__name__)
        wanted = " or ".join(_type_name(t) for t in types)
        msg = f"{name}: expected {wanted}, got {got} {_show(value)}"
        if "string" in types and isinstance(value, bool):
            msg += " (YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans; quote it)"
        elif "string" in types and isinstance(value, int | float):
            msg += f' (quote it: "{value}")'
        return [(err.at, False, msg)]
    if err.keyword == "const":
        expected = sub.get("const")
        msg = f"{name}: expected {_show(expected)}, got {_show(value)}"
        folder_kind = expected_kind(path)
        if name == "kind" and folder_kind:
            where = "fleet.yaml" if folder_kind == "Fleet" else f"{path.split('/', 1)[0]}/"
            msg = f"kind: files in {where} must be kind {folder_kind}, got {_show(value)}"
        return [(err.at, False, msg)]
    if err.keyword == "enum":
        options = ", ".join(str(o) for o in sub.get("enum", []))
        return [(err.at, False, f"{name}: {_show(value)} is not one of: {options}")]
    if (
        err.keyword in ("pattern", "anyOf", "oneOf")
        and isinstance(value, str | int | float)
        and not isinstance(value, bool)
    ):
        return [(err.at, False, f"{name}: {_show(value)} {_expectation(hint, err.message)}")]
    if err.keyword == "propertyNames":
        inner = err.details.get("error")
        key = getattr(inner, "instance", None)
        if isinstance(key, str):
            rule = _expectation(sub.get("propertyNames", {}).get("description"), str(inner))
            return [((*err.at, key), True, f"{name}: key {key!r} {rule}")]
    if err.keyword == "uniqueItems":
        return [(err.at, False, f"{name}: items must be unique ({_show(value)})")]
    detail = f" ({hint})" if hint and err.keyword in ("anyOf", "oneOf") else ""
    return [(err.at, False, f"{name}: {_one_line(err.message)}{detail}")]


def _expectation(hint: object, fallback: str) -> str:
    """'is not a SHA-256 digest: 64 lowercase hex characters' from the schema's description."""
    if isinstance(hint, str) and hint.startswith(("A ", "An ")):
        return "is not " + hint[0].lower() + hint[1:].rstrip(".")
    if isinstance(hint, str) and hint:
        return f"is not valid: {hint.rstrip('.')}"
    return f"is not valid ({fallback})"


def _one_line(message: str) -> str:
    return re.sub(r"\s+", " ", message)


def check_schema(loaded: LoadedFile, kind: str) -> list[Violation]:
    """Every schema violation of ``loaded`` against the schema of ``kind``, placed at its node."""
    name = KIND_SCHEMAS[kind]
    found = loaded.value.get("kind") if isinstance(loaded.value, dict) else None
    if isinstance(found, str) and found in KIND_SCHEMAS and found != kind:
        # a whole document in the wrong place: one clear error, not one per field
        where = "fleet.yaml" if kind == "Fleet" else f"{loaded.path.split('/', 1)[0]}/"
        line, column = loaded.locate(("kind",))
        return [
            Violation(
                loaded.path,
                line,
                column,
                f"kind: files in {where} must be kind {kind}, got {found!r} "
                "(is the file in the wrong folder?)",
            )
        ]
    out: list[Violation] = []
    seen: set[tuple[int, int, str]] = set()
    missing: dict[tuple[str | int, ...], list[str]] = {}
    errors = list(_engine(name).errors(loaded.value))
    # anyOf/oneOf say less than a direct error on the same value (a stricter $ref sibling)
    direct = {e.at for e in errors if e.keyword not in ("anyOf", "oneOf", "required")}
    for err in errors:
        if err.keyword in ("anyOf", "oneOf") and err.at in direct:
            continue
        if err.keyword == "required":  # one line per mapping, not one per missing field
            missing.setdefault(err.at, []).append(str(err.details.get("property", "")))
            continue
        for at, key, message in _message(err, loaded.value, loaded.path):
            line, column = loaded.locate(at, key=key)
            if (line, column, message) in seen:
                continue
            seen.add((line, column, message))
            out.append(Violation(loaded.path, line, column, message))
    for at, fields in missing.items():
        line, column = loaded.locate(at)
        where = f" in {field_name(at)}" if at else ""
        listed = ", ".join(repr(f) for f in sorted(fields))
        plural = "s" if len(fields) > 1 else ""
        out.append(
            Violation(loaded.path, line, column, f"missing required field{plural} {listed}{where}")
        )
    out.sort(key=lambda v: (v.line, v.column))
    return out
