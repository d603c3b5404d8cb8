"""The fleet spec as values: what the files of one revision of a fleet repo say.

Pure: built from already-parsed documents (``dict`` per path, as the YAML loader
returns them after schema validation). No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal, TypeAlias

from fleetkeeper_common.digests import config_digest, secrets_digest, target_digest
from fleetkeeper_common.rendering import secret_entry

JSON: TypeAlias = dict[str, "JSON"] | list["JSON"] | str | int | float | bool | None
WorkloadKind = Literal["process", "model"]
OnFailure = Literal["halt", "rollback"]
OnChange = Literal["restart", "none"]

DEFAULT_BATCH_SIZE: int | str = 1
DEFAULT_SOAK_SECONDS = 300
DEFAULT_TIMEOUT_SECONDS = 900
DEFAULT_ON_FAILURE: OnFailure = "halt"


@dataclass(frozen=True)
class Artifact:
    platform: str  # "linux/amd64" ... or "any" (model files)
    url: str
    sha256: str
    size: int | None = None  # required by the schema; None only for unvalidated input
    unpacked_size: int | None = None  # the most the archive may unpack to (agent-enforced)

    def to_json(self) -> dict[str, JSON]:
        out: dict[str, JSON] = {"platform": self.platform, "url": self.url, "sha256": self.sha256}
        if self.size is not None:
            out["size"] = self.size
        if self.unpacked_size is not None:
            out["unpackedSize"] = self.unpacked_size
        return out


@dataclass(frozen=True)
class Targets:
    roles: tuple[str, ...] | None = None
    accelerators: tuple[str, ...] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    nodes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Window:
    """A weekly maintenance window: on ``days`` from ``start`` (local time in ``timezone``,
    an IANA name) for ``minutes``. The planner evaluates it (``plan.windows``)."""

    days: tuple[str, ...]  # "Mon" .. "Sun"
    start: str  # "HH:MM"
    minutes: int
    timezone: str


# None: no window applies (always open); "ignore": an emergency release ignores every window
Windows: TypeAlias = tuple[Window, ...] | Literal["ignore"] | None


@dataclass(frozen=True)
class Rollout:
    batch_size: int | str = DEFAULT_BATCH_SIZE  # count or "25%"
    canary: tuple[str, ...] = ()
    soak_seconds: int = DEFAULT_SOAK_SECONDS
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    on_failure: OnFailure = DEFAULT_ON_FAILURE
    windows: Windows = None
    max_unavailable: int | str | None = None  # count or "10%"; None: no backpressure
    spread_seconds: int = 0


@dataclass(frozen=True)
class GgufFacts:
    """A model's ``gguf:`` block: what its file's header says (``fleetkeeper model new``)."""

    parameters: int
    layers: int
    kv_heads: int
    key_length: int
    value_length: int
    quantization: str | None = None
    context_length: int | None = None
    architecture: str | None = None


# --- config files and persistent data (issue 17, points 1 and 2) -------------------------
# The caps on config files: they travel inside every desired document of the nodes the
# release targets, so they stay small (a soul file, a routing table, a tool config).
MAX_CONFIG_FILE_BYTES = 256 * 1024
MAX_CONFIG_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ConfigFile:
    """``config.files[]``: ``source`` (``from``, a regular file of the fleet repo) becomes
    ``to`` in the workload's config directory. ``sha256``/``data`` are the file's bytes at
    the revision, filled in by ``reconciler.validate.config_files`` (empty until then)."""

    source: str
    to: str
    template: bool = False
    sha256: str = ""
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ConfigSpec:
    files: tuple[ConfigFile, ...]
    on_change: OnChange = "restart"

    @property
    def digest(self) -> str:
        """What status shows beside the version: changes when any file's bytes, name, template
        flag or ``onChange`` change (the rollout's target is (version, digest))."""
        return config_digest(self.on_change, ((f.to, f.template, f.sha256) for f in self.files))


@dataclass(frozen=True)
class DataSpec:
    """``data:``: copy ``<installRoot>/<name>/data/`` before an upgrade (``snapshot``),
    refused over ``max_bytes``; the copy comes back when the upgrade is rolled back."""

    snapshot: bool = False
    max_bytes: int | None = None


def parse_config(value: object) -> ConfigSpec | None:
    if not isinstance(value, dict):
        return None
    files = []
    for f in value.get("files") or ():
        assert isinstance(f, dict)
        files.append(
            ConfigFile(source=str(f["from"]), to=str(f["to"]), template=f.get("template") is True)
        )
    return ConfigSpec(
        files=tuple(files), on_change="none" if value.get("onChange") == "none" else "restart"
    )


def parse_data(value: object) -> DataSpec | None:
    if not isinstance(value, dict):
        return None
    limit = value.get("maxBytes")
    return DataSpec(
        snapshot=value.get("snapshot") is True,
        max_bytes=limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
    )


# --- end config files and persistent data -------------------------------------------------
# -- secrets (issue 17): age ciphertext from secrets/ in the fleet repo ------------------
SecretAs = Literal["env", "file"]


@dataclass(frozen=True)
class SecretRef:
    """One ``secrets:`` entry of a release or model. ``ciphertext`` is the age file's text
    (armored), filled in from the revision's tree (``secret_files.attach_ciphertexts``);
    the reconciler passes it on and never holds a key that opens it."""

    name: str  # the environment variable (as: env) or file name (as: file)
    source: str  # from: secrets/<...>.age, repo-relative
    as_: SecretAs
    ciphertext: str = ""

    def to_json(self) -> dict[str, JSON]:
        return secret_entry(self.name, self.source, self.as_, self.ciphertext)


def parse_secrets(value: object) -> tuple[SecretRef, ...]:
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict):
            as_: SecretAs = "file" if item.get("as") == "file" else "env"
            out.append(SecretRef(str(item.get("name")), str(item.get("from")), as_))
    return tuple(out)


# -- end secrets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployable:
    """One version of something a node runs: a Release (kind process) or a Model."""

    name: str
    version: str
    kind: WorkloadKind
    path: str  # file in the fleet repo, e.g. releases/inference-agent/0.8.4.yaml
    artifacts: tuple[Artifact, ...]
    run: Mapping[str, JSON]  # {"command": [...], "env": {...}}; models: {} (agent builds it)
    health: Mapping[str, JSON]
    version_probe: tuple[str, ...] | None
    targets: Targets
    rollout: Rollout
    runtime: str | None = None  # models: "llama-cpp" | "mlx-lm"
    args: Mapping[str, JSON] = field(default_factory=dict)  # models: runtime args
    gguf: GgufFacts | None = None  # models: the GGUF header's facts, when recorded
    drain: Mapping[str, JSON] = field(default_factory=dict)  # {http|file, timeoutSeconds}
    config: ConfigSpec | None = None  # config files (issue 17)
    data: DataSpec | None = None  # persistent data snapshot settings (issue 17)
    secrets: tuple[SecretRef, ...] = ()  # issue 17: age-encrypted, decrypted on the node

    @property
    def target_digest(self) -> str | None:
        """With the version, the rollout's target: config files and secrets' ciphertext
        (``fleetkeeper_common.digests``; the agent reports the same as ``configDigest``)."""
        sealed = secrets_digest((s.name, s.as_, s.source, s.ciphertext) for s in self.secrets)
        return target_digest(self.config.digest if self.config is not None else None, sealed)

    def artifact_for(self, platform: str) -> Artifact | None:
        for art in self.artifacts:
            if art.platform == platform:
                return art
        for art in self.artifacts:
            if art.platform == "any":
                return art
        return None


@dataclass(frozen=True)
class Hold:
    """``hold: true`` (until removed) or ``hold: {until: 2026-12-24}`` (until that day
    begins, UTC): the node keeps what it runs."""

    until: float | None = None  # unix seconds; None: indefinitely

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until


@dataclass(frozen=True)
class NodeTraits:
    """What selectors match a node on: shared by its file (``NodeSpec``) and the planner's
    view of it (``plan.select.NodeFacts``)."""

    name: str
    platform: str
    accelerator: str = "cpu"
    memory_gib: float | None = None
    roles: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    windows: tuple[Window, ...] | None = None  # the node file's own windows win over a release's
    hold: Hold | None = None
    age_recipient: str | None = None  # ageRecipient: the node's age public key (issue 17)


@dataclass(frozen=True)
class NodeSpec(NodeTraits):
    path: str | None = None  # nodes/<name>.yaml; None for a node known only from registration


@dataclass(frozen=True)
class FleetSettings:
    name: str = "fleet"
    allow_insecure_urls: bool = False
    default_rollout: Mapping[str, JSON] = field(default_factory=dict)
    # registration.unlisted: "allow" lets a node without a file in nodes/ get workloads,
    # planned from the roles/labels its join token's scope covered; "deny" (default) not
    unlisted: Literal["allow", "deny"] = "deny"
    # secrets.operatorRecipients: age recipients every secret is also encrypted to, so an
    # operator can decrypt and re-encrypt it later (issue 17)
    operator_recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class FleetSpec:
    fleet: FleetSettings
    nodes: Mapping[str, NodeSpec]
    deployables: tuple[Deployable, ...]  # every release and model file, all versions


def _str_tuple(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    assert isinstance(value, list)
    return tuple(str(v) for v in value)


def _str_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _dict(value: object) -> dict[str, JSON]:
    return dict(value) if isinstance(value, dict) else {}


_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?$")


def parse_duration_minutes(text: str) -> int | None:
    """``"4h"`` -> 240, ``"1h30m"`` -> 90, ``"45m"`` -> 45; None when it is not one."""
    m = _DURATION.match(text)
    if m is None or not (m[1] or m[2]):
        return None
    return int(m[1] or 0) * 60 + int(m[2] or 0)


def parse_windows(value: object) -> Windows:
    """``windows:``: ``"ignore"``, or a list of ``{days, start, duration, timezone}``."""
    if value == "ignore":
        return "ignore"
    if not isinstance(value, list):
        return None
    out = []
    for w in value:
        assert isinstance(w, dict)
        out.append(
            Window(
                days=tuple(str(d) for d in w.get("days") or ()),
                start=str(w.get("start", "00:00")),
                minutes=parse_duration_minutes(str(w.get("duration", ""))) or 0,
                timezone=str(w.get("timezone", "UTC")),
            )
        )
    return tuple(out)


def parse_hold(value: object) -> Hold | None:
    """``hold: true`` / ``hold: {until: DATE}`` (YAML may give a date or a string)."""
    if value is True:
        return Hold()
    if not isinstance(value, dict) or "until" not in value:
        return None
    until = value["until"]
    try:
        day = until if isinstance(until, date) else date.fromisoformat(str(until))
    except ValueError:  # validation reports it; until then, the safe reading: held
        return Hold()
    return Hold(until=datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def parse_rollout(own: Mapping[str, JSON], defaults: Mapping[str, JSON]) -> Rollout:
    """A release's rollout block over the fleet defaults over the built-in defaults."""
    merged = {**defaults, **own}
    max_unavailable = merged.get("maxUnavailable")
    spread = merged.get("spreadSeconds", 0)
    batch = merged.get("batchSize", DEFAULT_BATCH_SIZE)
    on_failure = merged.get("onFailure", DEFAULT_ON_FAILURE)
    soak = merged.get("soakSeconds", DEFAULT_SOAK_SECONDS)
    timeout = merged.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
    assert isinstance(batch, int | str) and isinstance(soak, int) and isinstance(timeout, int)
    return Rollout(
        batch_size=batch,
        canary=_str_tuple(merged.get("canary")) or (),
        soak_seconds=soak,
        timeout_seconds=timeout,
        on_failure="rollback" if on_failure == "rollback" else "halt",
        windows=parse_windows(merged.get("windows")),
        max_unavailable=max_unavailable if isinstance(max_unavailable, int | str) else None,
        spread_seconds=spread if isinstance(spread, int) else 0,
    )


def parse_targets(doc: object) -> Targets:
    d = _dict(doc)
    return Targets(
        roles=_str_tuple(d.get("roles")),
        accelerators=_str_tuple(d.get("accelerators")),
        labels=_str_map(d.get("labels")),
        nodes=_str_tuple(d.get("nodes")),
    )


def parse_artifacts(doc: object) -> tuple[Artifact, ...]:
    out = []
    for a in doc if isinstance(doc, list) else []:
        assert isinstance(a, dict)
        size, unpacked = a.get("size"), a.get("unpackedSize")
        out.append(
            Artifact(
                platform=str(a["platform"]),
                url=str(a["url"]),
                sha256=str(a["sha256"]),
                size=size if isinstance(size, int) else None,
                unpacked_size=unpacked if isinstance(unpacked, int) else None,
            )
        )
    return tuple(out)


def parse_gguf(doc: object) -> GgufFacts | None:
    if not isinstance(doc, dict):
        return None
    ints = {k: doc.get(k) for k in ("parameters", "layers", "kvHeads", "keyLength", "valueLength")}
    if not all(isinstance(v, int) for v in ints.values()):
        return None
    ctx, quant, arch = doc.get("contextLength"), doc.get("quantization"), doc.get("architecture")
    return GgufFacts(
        parameters=int(doc["parameters"]),
        layers=int(doc["layers"]),
        kv_heads=int(doc["kvHeads"]),
        key_length=int(doc["keyLength"]),
        value_length=int(doc["valueLength"]),
        quantization=quant if isinstance(quant, str) else None,
        context_length=ctx if isinstance(ctx, int) else None,
        architecture=arch if isinstance(arch, str) else None,
    )


def parse_fleet(doc: Mapping[str, JSON] | None) -> FleetSettings:
    if doc is None:
        return FleetSettings()
    defaults = _dict(doc.get("defaults"))
    registration = _dict(doc.get("registration"))
    return FleetSettings(
        name=str(doc.get("name", "fleet")),
        allow_insecure_urls=bool(doc.get("allowInsecureURLs", False)),
        default_rollout=_dict(defaults.get("rollout")),
        unlisted="allow" if registration.get("unlisted") == "allow" else "deny",
        operator_recipients=_str_tuple(_dict(doc.get("secrets")).get("operatorRecipients")) or (),
    )


def parse_node(path: str | None, doc: Mapping[str, JSON]) -> NodeSpec:
    mem = doc.get("memoryGiB")
    return NodeSpec(
        name=str(doc["name"]),
        platform=str(doc["platform"]),
        accelerator=str(doc.get("accelerator", "cpu")),
        memory_gib=float(mem) if isinstance(mem, int | float) else None,
        roles=_str_tuple(doc.get("roles")) or (),
        labels=_str_map(doc.get("labels")),
        windows=windows
        if isinstance(windows := parse_windows(doc.get("windows")), tuple)
        else None,
        hold=parse_hold(doc.get("hold")),
        age_recipient=recipient if isinstance(recipient := doc.get("ageRecipient"), str) else None,
        path=path,
    )


def parse_deployable(path: str, doc: Mapping[str, JSON], fleet: FleetSettings) -> Deployable:
    is_model = doc.get("kind") == "Model"
    probe = doc.get("versionProbe")
    return Deployable(
        name=str(doc["name"] if is_model else doc["agent"]),
        version=str(doc["version"]),
        kind="model" if is_model else "process",
        path=path,
        artifacts=parse_artifacts(doc.get("artifacts")),
        run=_dict(doc.get("run")),
        health=_dict(doc.get("health")),
        version_probe=_str_tuple(probe) if isinstance(probe, list) else None,
        targets=parse_targets(doc.get("targets")),
        rollout=parse_rollout(_dict(doc.get("rollout")), fleet.default_rollout),
        runtime=str(doc["runtime"]) if is_model else None,
        args=_dict(doc.get("args")) if is_model else {},
        gguf=parse_gguf(doc.get("gguf")) if is_model else None,
        drain=_dict(doc.get("drain")),
        config=parse_config(doc.get("config")),
        data=parse_data(doc.get("data")),
        secrets=parse_secrets(doc.get("secrets")),
    )


def build_spec(documents: Mapping[str, Mapping[str, JSON]]) -> FleetSpec:
    """The fleet spec from schema-valid documents keyed by repo-relative path."""
    fleet = parse_fleet(documents.get("fleet.yaml"))
    nodes: dict[str, NodeSpec] = {}
    deployables: list[Deployable] = []
    for path in sorted(documents):
        doc = documents[path]
        kind = doc.get("kind")
        if kind == "Node":
            node = parse_node(path, doc)
            nodes[node.name] = node
        elif kind in ("Release", "Model"):
            deployables.append(parse_deployable(path, doc, fleet))
    return FleetSpec(fleet=fleet, nodes=nodes, deployables=tuple(deployables))
