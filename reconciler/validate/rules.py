"""Cross-file rules: what no single file's schema can say.

A rule is a function ``(ctx: RuleContext) -> Iterable[Violation]``. ``RULES`` lists them in
the order they run; ``reconciler.validate.model_rules.RULES`` adds the model-specific ones.
Rules see only documents that passed the per-file checks (YAML pitfalls and schema), so
they can rely on the schema's shapes.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from reconciler.plan.select import NodeFacts, matches, semver_key, target_nodes
from reconciler.spec import Deployable, FleetSpec, build_spec
from reconciler.validate.loader import LoadedFile
from reconciler.validate.report import Severity, Violation

JsonPath = Sequence[str | int]


@dataclass(frozen=True)
class RuleContext:
    files: Mapping[str, LoadedFile]  # files that passed the per-file checks
    all_paths: frozenset[str]  # every fleet file of the set, valid or not
    spec: FleetSpec
    nodes: Mapping[str, NodeFacts]  # declared nodes that passed the per-file checks
    _targeted: dict[tuple[object, ...], list[NodeFacts]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, files: Mapping[str, LoadedFile], all_paths: Iterable[str]) -> RuleContext:
        spec = build_spec({p: f.value for p, f in files.items()})
        return cls(
            files=files,
            all_paths=frozenset(all_paths),
            spec=spec,
            nodes={name: NodeFacts.from_spec(n) for name, n in spec.nodes.items()},
        )

    @cached_property
    def node_files(self) -> list[str]:
        return sorted(p for p in self.all_paths if p.startswith("nodes/"))

    @cached_property
    def declared_node_names(self) -> set[str]:
        """Names of nodes/<name>.yaml files, valid or not (an invalid file is reported
        on its own; rules should not also call its node missing)."""
        return {p[len("nodes/") : -len(".yaml")] for p in self.node_files}

    @cached_property
    def nodes_complete(self) -> bool:
        """Every node file passed its checks: selection results can be trusted."""
        return all(p in self.files for p in self.node_files)

    def node_path(self, name: str) -> str:
        return f"nodes/{name}.yaml"

    def violation(
        self,
        path: str,
        at: JsonPath,
        message: str,
        *,
        key: bool = False,
        severity: Severity = "error",
        related: Iterable[str] = (),
    ) -> Violation:
        loaded = self.files.get(path)
        line, column = loaded.locate(at, key=key) if loaded is not None else (1, 1)
        return Violation(path, line, column, message, severity, tuple(sorted(set(related))))

    def deployables(self) -> Iterator[tuple[Deployable, dict[str, Any]]]:
        for d in self.spec.deployables:
            yield d, self.files[d.path].value

    def targeted(self, d: Deployable) -> list[NodeFacts]:
        """The declared nodes ``d`` targets (canaries first); computed once per selector."""
        # Keyed by selector, not by file: every version of an agent usually shares its
        # targets, so 5,000 releases x 1,000 nodes cost 100 selections, not 5,000.
        t = d.targets
        key = (t.roles, t.accelerators, tuple(sorted(t.labels.items())), t.nodes, d.rollout.canary)
        found = self._targeted.get(key)
        if found is None:
            found = self._targeted[key] = [self.nodes[n] for n in target_nodes(d, self.nodes)]
        return found


Rule = Callable[[RuleContext], Iterable[Violation]]


def file_names(ctx: RuleContext) -> Iterator[Violation]:
    """nodes/<name>.yaml, releases/<agent>/<version>.yaml, models/<name>/<version>.yaml."""
    for path, loaded in ctx.files.items():
        doc = loaded.value
        parts = path[: -len(".yaml")].split("/")
        kind = doc.get("kind")
        if kind == "Node":
            checks = [("name", parts[1], "the file name")]
        elif kind == "Release":
            checks = [
                ("agent", parts[1], "the folder name"),
                ("version", parts[2], "the file name"),
            ]
        elif kind == "Model":
            checks = [("name", parts[1], "the folder name"), ("version", parts[2], "the file name")]
        else:
            continue
        for field_, expected, what in checks:
            if doc.get(field_) != expected:
                yield ctx.violation(
                    path,
                    (field_,),
                    f"{field_} {doc.get(field_)!r} must equal {what} {expected!r} "
                    f"(rename the file or fix the field)",
                )


def unique_names(ctx: RuleContext) -> Iterator[Violation]:
    """A workload name belongs to one agent or one model; versions are distinct."""
    agents = {d.name for d in ctx.spec.deployables if d.kind == "process"}
    seen: dict[tuple[str, tuple[Any, ...]], Deployable] = {}
    for d in ctx.spec.deployables:
        if d.kind == "model" and d.name in agents:
            yield ctx.violation(
                d.path,
                ("name",),
                f"name {d.name!r} is also an agent in releases/{d.name}/; a node runs one "
                "workload per name, so pick another model name",
                related=[p for p in ctx.files if p.startswith(f"releases/{d.name}/")],
            )
        key = (d.kind + ":" + d.name, semver_key(d.version))
        first = seen.setdefault(key, d)
        if first is not d:
            yield ctx.violation(
                d.path,
                ("version",),
                f"version {d.version} has the same precedence as {first.version} in "
                f"{first.path} (build metadata after '+' does not order versions)",
                related=[first.path],
            )


def one_artifact_per_platform(ctx: RuleContext) -> Iterator[Violation]:
    for d, _ in ctx.deployables():
        first: dict[str, int] = {}
        for i, art in enumerate(d.artifacts):
            if art.platform in first:
                yield ctx.violation(
                    d.path,
                    ("artifacts", i, "platform"),
                    f"second artifact for {art.platform} (the first is artifacts"
                    f"[{first[art.platform]}]); give one artifact per platform",
                )
            else:
                first[art.platform] = i


_CREDENTIALS = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@]*@", re.IGNORECASE)


def artifact_urls(ctx: RuleContext) -> Iterator[Violation]:
    """https:// only, unless fleet.yaml sets allowInsecureURLs: true; no credentials."""
    insecure_ok = ctx.spec.fleet.allow_insecure_urls
    for d, _ in ctx.deployables():
        for i, art in enumerate(d.artifacts):
            at = ("artifacts", i, "url")
            scheme = urlsplit(art.url).scheme.lower()
            if _CREDENTIALS.match(art.url):
                yield ctx.violation(
                    d.path,
                    at,
                    "artifact URL carries credentials (user:password@); they would be "
                    "stored in Git. Use a URL that needs none",
                )
            if scheme in ("http", "file") and not insecure_ok:
                yield ctx.violation(
                    d.path,
                    at,
                    f"{scheme}:// artifact URL is not allowed; use https:// (or set "
                    "allowInsecureURLs: true in fleet.yaml, for labs and tests only)",
                    related=["fleet.yaml"] if "fleet.yaml" in ctx.all_paths else [],
                )
            elif scheme not in ("https", "http", "file"):
                yield ctx.violation(d.path, at, f"unsupported URL scheme {scheme!r}; use https://")
            if "${" in art.url:
                yield ctx.violation(
                    d.path,
                    at,
                    "placeholders are not filled in artifact URLs (one URL serves every node "
                    "of the platform); write the URL out",
                )


def named_nodes_exist(ctx: RuleContext) -> Iterator[Violation]:
    """targets.nodes and rollout.canary name nodes that have a file in nodes/."""
    declared = ctx.declared_node_names
    severity: Severity = "error" if declared else "warning"
    for d, doc in ctx.deployables():
        for section, field_ in (("targets", "nodes"), ("rollout", "canary")):
            names = (doc.get(section) or {}).get(field_) or []
            for i, name in enumerate(names):
                if name not in declared:
                    tip = _closest(name, declared)
                    yield ctx.violation(
                        d.path,
                        (section, field_, i),
                        f"{section}.{field_} names node {name!r}, which has no file "
                        f"nodes/{name}.yaml{tip}",
                        severity=severity,
                    )


def _closest(name: str, names: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _describe(node: NodeFacts) -> str:
    return f"{node.name} ({node.platform}, {node.accelerator})"


def targets_select_nodes(ctx: RuleContext) -> Iterator[Violation]:
    """A release must reach some declared node; a canary must be one of those it reaches."""
    if not ctx.nodes_complete:
        return  # an invalid node file is reported on its own; selection would mislead
    for d, doc in ctx.deployables():
        at = ("targets",) if "targets" in doc else ()
        chosen = ctx.targeted(d)
        if not ctx.nodes:
            yield ctx.violation(
                d.path,
                at,
                "no node files in nodes/: cannot check which nodes this targets",
                key=bool(at),
                severity="warning",
            )
            continue
        if not chosen:
            yield ctx.violation(
                d.path,
                at,
                f"targets select none of the {len(ctx.nodes)} nodes in nodes/ "
                f"({', '.join(sorted(ctx.nodes))}); every given selector must match",
                key=bool(at),
                related=ctx.node_files,
            )
            continue
        chosen_names = {n.name for n in chosen}
        for i, name in enumerate(d.rollout.canary):
            own = (doc.get("rollout") or {}).get("canary")
            if name in ctx.nodes and name not in chosen_names:
                yield ctx.violation(
                    d.path,
                    ("rollout", "canary", i) if own else at,
                    f"canary {name!r} is not among the nodes the targets select "
                    f"({', '.join(sorted(chosen_names))})",
                    related=[ctx.node_path(name)],
                )


def artifacts_for_targets(ctx: RuleContext) -> Iterator[Violation]:
    """Every targeted node gets an artifact for its platform (else the rollout strands it)."""
    if not ctx.nodes_complete:
        return
    for d, _ in ctx.deployables():
        missing: dict[str, list[NodeFacts]] = {}
        for node in ctx.targeted(d):
            if d.artifact_for(node.platform) is None:
                missing.setdefault(node.platform, []).append(node)
        for platform, nodes in sorted(missing.items()):
            names = ", ".join(n.name for n in nodes)
            yield ctx.violation(
                d.path,
                ("artifacts",),
                f"no artifact for {platform}, but the targets select {names}; add a "
                f"{platform} artifact or narrow the targets",
                key=True,
                related=[ctx.node_path(n.name) for n in nodes],
            )


def rollout_sanity(ctx: RuleContext) -> Iterator[Violation]:
    """Timeouts that can be met; batch sizes that mean what they say."""
    for d, doc in ctx.deployables():
        own = doc.get("rollout") or {}
        health_timeout = (doc.get("health") or {}).get("timeoutSeconds")
        if isinstance(health_timeout, int) and d.rollout.timeout_seconds <= health_timeout:
            where = (
                ("rollout", "timeoutSeconds")
                if "timeoutSeconds" in own
                else (
                    "health",
                    "timeoutSeconds",
                )
            )
            origin = "" if "timeoutSeconds" in own else " (from fleet.yaml defaults or built-in)"
            yield ctx.violation(
                d.path,
                where,
                f"rollout.timeoutSeconds {d.rollout.timeout_seconds}{origin} must be greater "
                f"than health.timeoutSeconds {health_timeout}: a node would be declared "
                "failed before its health check could pass",
            )
        if not ctx.nodes_complete or not ctx.nodes:
            continue
        chosen = ctx.targeted(d)
        batch = d.rollout.batch_size
        if isinstance(batch, int) and chosen and batch > len(chosen) and "batchSize" in own:
            yield ctx.violation(
                d.path,
                ("rollout", "batchSize"),
                f"batchSize {batch} exceeds the {len(chosen)} targeted node(s): the whole "
                "rollout is one batch",
                severity="warning",
            )
        if chosen and d.rollout.canary and len(set(d.rollout.canary)) >= len(chosen) > 1:
            yield ctx.violation(
                d.path,
                ("rollout", "canary") if "canary" in own else ("targets",),
                "every targeted node is a canary: nothing is left to protect",
                severity="warning",
            )


_ANY_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_KNOWN = re.compile(r"^node\.(name|labels\.([A-Za-z0-9._/-]+))$")


def _strings(
    value: object, at: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        yield at, value
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*at, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*at, k))


def placeholders(ctx: RuleContext) -> Iterator[Violation]:
    """${node.name} and ${node.labels.KEY} only, and every targeted node has KEY."""
    check_labels = ctx.nodes_complete and bool(ctx.nodes)
    for d, doc in ctx.deployables():
        chosen = ctx.targeted(d) if check_labels else []
        for section in ("run", "health", "versionProbe", "args"):
            for at, text in _strings(doc.get(section), (section,)):
                for m in _ANY_PLACEHOLDER.finditer(text):
                    known = _KNOWN.match(m[1])
                    if known is None:
                        yield ctx.violation(
                            d.path,
                            at,
                            f"unknown placeholder ${{{m[1]}}}; use ${{node.name}} or "
                            "${node.labels.KEY}",
                        )
                        continue
                    label = known[2]
                    if label is None:
                        continue
                    lacking = [n for n in chosen if label not in n.labels]
                    if lacking:
                        yield ctx.violation(
                            d.path,
                            at,
                            f"${{node.labels.{label}}} but targeted node(s) "
                            f"{', '.join(n.name for n in lacking)} have no label {label!r}",
                            related=[ctx.node_path(n.name) for n in lacking],
                        )


def fleet_defaults(ctx: RuleContext) -> Iterator[Violation]:
    """A canary in fleet-wide defaults would apply to every release: name real nodes."""
    loaded = ctx.files.get("fleet.yaml")
    if loaded is None:
        return
    canary = ((loaded.value.get("defaults") or {}).get("rollout") or {}).get("canary") or []
    declared = ctx.declared_node_names
    for i, name in enumerate(canary):
        if name not in declared:
            yield ctx.violation(
                "fleet.yaml",
                ("defaults", "rollout", "canary", i),
                f"defaults.rollout.canary names node {name!r}, which has no file nodes/{name}.yaml",
                severity="error" if declared else "warning",
            )


def matching(ctx: RuleContext, d: Deployable) -> list[str]:
    """Names of declared nodes that ``d``'s targets select (for rules in other modules)."""
    return sorted(n for n, f in ctx.nodes.items() if matches(d.targets, f))


RULES: list[Rule] = [
    file_names,
    unique_names,
    one_artifact_per_platform,
    artifact_urls,
    named_nodes_exist,
    targets_select_nodes,
    artifacts_for_targets,
    rollout_sanity,
    placeholders,
    fleet_defaults,
]
