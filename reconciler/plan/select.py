"""Which version of each workload is desired, on which nodes, with what resolved settings.

Pure functions. The rollout logic (batches, soak, halts) lives in ``rollout``; this
module only answers "if the rollout were complete, what would each node run".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

from fleetkeeper_common.rendering import config_file_entry, fill_config
from reconciler.plan.admission import claims_of, scope_covers_claims
from reconciler.spec import JSON, ConfigSpec, Deployable, FleetSpec, NodeSpec, NodeTraits, Targets

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$"
)
_PLACEHOLDER = re.compile(r"\$\{node\.(name|labels\.([A-Za-z0-9._/-]+))\}")


@dataclass(frozen=True)
class NodeFacts(NodeTraits):
    """A node as the planner sees it: from nodes/<name>.yaml, else from what it registered."""

    declared: bool = True  # has a file in nodes/
    runtimes: Mapping[str, bool] = field(default_factory=dict)
    # registered through a join token whose role/label scope covers these roles and labels
    # (what lets an unlisted node get workloads under ``registration: {unlisted: allow}``)
    scoped: bool = False

    @classmethod
    def from_spec(cls, node: NodeSpec) -> NodeFacts:
        return cls(
            name=node.name,
            platform=node.platform,
            accelerator=node.accelerator,
            memory_gib=node.memory_gib,
            roles=node.roles,
            labels=dict(node.labels),
            windows=node.windows,
            hold=node.hold,
            age_recipient=node.age_recipient,
            declared=True,
        )

    @classmethod
    def from_registration(
        cls, name: str, facts: Mapping[str, JSON], admission: Mapping[str, JSON] | None = None
    ) -> NodeFacts:
        """An undeclared node from the facts it registered (wrong types read as absent);
        ``admission``: how it got its credential (``NodeRecord.admission``), which says
        whether a join token's scope covered these claims."""
        roles, labels, runtimes = facts.get("roles"), facts.get("labels"), facts.get("runtimes")
        mem = facts.get("memoryGiB")
        return cls(
            name=name,
            platform=str(facts.get("platform", "")),
            accelerator=str(facts.get("accelerator", "cpu")),
            memory_gib=float(mem) if isinstance(mem, int | float) else None,
            roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
            labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
            declared=False,
            runtimes={str(k): v is True for k, v in runtimes.items()}
            if isinstance(runtimes, dict)
            else {},
            scoped=scope_covers_claims(admission or {}, claims_of(facts)),
        )


SemverKey = tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]


# Memoised on the version string alone (immutable): a fleet of 5,000 releases asks for the
# same few thousand keys on every plan, and the regex is most of latest_versions' cost.
@lru_cache(maxsize=65_536)
def semver_key(version: str) -> SemverKey:
    """Sort key for semantic versions: a prerelease sorts before its release (semver §11)."""
    m = _SEMVER.match(version)
    if m is None:
        return (-1, -1, -1, 0, ())
    major, minor, patch, pre = int(m[1]), int(m[2]), int(m[3]), m[4]
    if pre is None:
        return (major, minor, patch, 1, ())
    parts: list[tuple[int, int | str]] = []
    for p in pre.split("."):
        parts.append((0, int(p)) if p.isdigit() else (1, p))
    return (major, minor, patch, 0, tuple(parts))


def latest_versions(spec: FleetSpec) -> dict[str, Deployable]:
    """The highest version of every workload name whose file exists in the revision."""
    best: dict[str, Deployable] = {}
    keys: dict[str, SemverKey] = {}
    for d in spec.deployables:
        key = semver_key(d.version)
        cur = keys.get(d.name)
        if cur is None or key > cur:
            best[d.name] = d
            keys[d.name] = key
    return best


def matches(targets: Targets, node: NodeFacts) -> bool:
    """Every given selector must match; no selector at all matches every node."""
    if targets.nodes is not None and node.name not in targets.nodes:
        return False
    if targets.roles is not None and not set(targets.roles) & set(node.roles):
        return False
    if targets.accelerators is not None and node.accelerator not in targets.accelerators:
        return False
    return all(node.labels.get(k) == v for k, v in targets.labels.items())


def inventory(spec: FleetSpec, registered: Iterable[NodeFacts] = ()) -> dict[str, NodeFacts]:
    """Declared nodes win over registered facts. A registered node without a file is left
    out (it is ``Unlisted``: self-reported roles must not pull it into rollouts) unless
    ``fleet.yaml`` allows unlisted nodes and its join token's scope covered its claims."""
    reg = {n.name: n for n in registered}
    out: dict[str, NodeFacts] = {}
    for name, node in spec.nodes.items():
        facts = NodeFacts.from_spec(node)
        if name in reg:
            facts = replace(facts, runtimes=dict(reg[name].runtimes))
        out[name] = facts
    for name, facts in reg.items():
        if name not in out and admitted_unlisted(spec, facts):
            out[name] = replace(
                facts, labels=dict(facts.labels), runtimes=dict(facts.runtimes), declared=False
            )
    return out


def admitted_unlisted(spec: FleetSpec, facts: NodeFacts) -> bool:
    """May a registered node without a file in nodes/ get workloads?"""
    return spec.fleet.unlisted == "allow" and facts.scoped


def target_nodes(d: Deployable, nodes: Mapping[str, NodeFacts]) -> list[str]:
    """Names of the nodes ``d`` targets, sorted, canaries first in their given order."""
    chosen = sorted(selected(d.targets, nodes))
    canary = [c for c in d.rollout.canary if c in chosen]
    return canary + [n for n in chosen if n not in canary]


def selected(targets: Targets, nodes: Mapping[str, NodeFacts]) -> list[str]:
    """Keys of ``nodes`` that ``targets`` select, in ``nodes``' order: ``matches`` for each
    node, with each selector turned into a set once rather than once per node (the planner
    asks this for every workload over every node)."""
    names = None if targets.nodes is None else frozenset(targets.nodes)
    roles = None if targets.roles is None else frozenset(targets.roles)
    accelerators = None if targets.accelerators is None else frozenset(targets.accelerators)
    labels = tuple(targets.labels.items())
    if names is None and accelerators is None and not labels:  # the usual: roles, or nothing
        if roles is None:
            return list(nodes)
        if len(roles) == 1:
            (role,) = roles
            return [n for n, f in nodes.items() if role in f.roles]
        return [n for n, f in nodes.items() if not roles.isdisjoint(f.roles)]
    out = []
    for n, f in nodes.items():
        if names is not None and f.name not in names:
            continue
        if roles is not None and roles.isdisjoint(f.roles):
            continue
        if accelerators is not None and f.accelerator not in accelerators:
            continue
        if labels and not all(f.labels.get(k) == v for k, v in labels):
            continue
        out.append(n)
    return out


def resolve(value: JSON, node: NodeFacts) -> JSON:
    """Replace ${node.name} and ${node.labels.KEY} in every string of ``value``."""
    # Strings without "${" are kept as they are without a call or a regex: the planner
    # resolves every workload's run and health blocks for every node, and most strings
    # in them hold no placeholder.
    if isinstance(value, str):
        return _fill(value, node) if "${" in value else value
    if isinstance(value, list):
        return [v if isinstance(v, str) and "${" not in v else resolve(v, node) for v in value]
    if isinstance(value, dict):
        return {
            k: v if isinstance(v, str) and "${" not in v else resolve(v, node)
            for k, v in value.items()
        }
    return value


def _fill(text: str, node: NodeFacts) -> str:
    def sub(m: re.Match[str]) -> str:
        if m[1] == "name":
            return node.name
        return node.labels.get(m[2], "")

    return _PLACEHOLDER.sub(sub, text)


def workload_document(d: Deployable, node: NodeFacts) -> dict[str, JSON] | None:
    """The desired-state entry of ``d`` for ``node`` (None: no artifact for its platform)."""
    art = d.artifact_for(node.platform)
    if art is None:
        return None
    doc: dict[str, JSON] = {
        "name": d.name,
        "kind": d.kind,
        "version": d.version,
        "artifact": art.to_json(),
    }
    if d.run:
        doc["run"] = resolve(dict(d.run), node)
    if d.health:
        doc["health"] = resolve(dict(d.health), node)
    if d.version_probe:
        doc["versionProbe"] = resolve(list(d.version_probe), node)
    if d.drain:
        doc["drain"] = resolve(dict(d.drain), node)
    if d.secrets:  # ciphertext only: the node decrypts (issue 17)
        doc["secrets"] = [s.to_json() for s in d.secrets]
    if d.kind == "model":
        args = resolve(dict(d.args), node)
        assert isinstance(args, dict)
        port = args.get("port")
        if isinstance(port, str) and port.isdigit():
            args["port"] = int(port)
        doc["model"] = {"runtime": d.runtime, "args": args}
    if d.config is not None:
        doc["config"] = config_document(d.config, node)
    if d.data is not None:
        data: dict[str, JSON] = {"snapshot": d.data.snapshot}
        if d.data.max_bytes is not None:
            data["maxBytes"] = d.data.max_bytes
        doc["data"] = data
    return doc


def config_document(config: ConfigSpec, node: NodeFacts) -> dict[str, JSON]:
    """The ``config`` entry of a workload document: each file's bytes (placeholders filled
    in for ``node`` when it is a template) as base64 with their SHA-256. Rendered by
    ``fleetkeeper_common.fleetfile``, as an agent with approvers re-renders it."""
    files: list[JSON] = [
        config_file_entry(f.to, fill_config(f.data, f.template, node.name, node.labels))
        for f in config.files
    ]
    return {"digest": config.digest, "onChange": config.on_change, "files": files}


def desired_workloads(
    spec: FleetSpec, nodes: Mapping[str, NodeFacts]
) -> dict[str, list[dict[str, JSON]]]:
    """Per node, the workload documents of the latest version of everything that targets it."""
    out: dict[str, list[dict[str, JSON]]] = {n: [] for n in sorted(nodes)}
    for name in sorted(latest := latest_versions(spec)):
        d = latest[name]
        for node_name in target_nodes(d, nodes):
            doc = workload_document(d, nodes[node_name])
            if doc is not None:
                out[node_name].append(doc)
    return out
