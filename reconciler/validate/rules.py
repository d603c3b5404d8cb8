"""Cross-file rules: what no single file's schema can say.

A rule is a function ``(ctx: RuleContext) -> Iterable[Violation]``. ``RULES`` lists them in
the order they run; ``reconciler.validate.model_rules.RULES`` adds the model-specific ones.
Rules see only documents that passed the per-file checks (YAML pitfalls and schema), so
they can rely on the schema's shapes.

Most rules judge one file at a time given only the ``Scope`` (fleet settings and node set):
each of those is written as a per-file rule, and ``PER_FILE`` maps the whole-set rule to it,
so that ``validate_incremental`` can keep a file's findings while its blob and the scope are
unchanged. The whole-set rule is that per-file rule over the files in path order, so both
paths give the same violations in the same order.

Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from reconciler.plan.select import NodeFacts, matches, semver_key, target_nodes
from reconciler.spec import Deployable, FleetSettings, FleetSpec, NodeSpec, build_spec
from reconciler.validate.loader import LoadedFile
from reconciler.validate.violations import Severity, Violation

JsonPath = Sequence[str | int]


def node_path(name: str) -> str:
    return f"nodes/{name}.yaml"


@dataclass(frozen=True, eq=False)
class Scope:
    """All that a per-file rule may know besides its own file: the fleet settings and the
    node set. A per-file rule's findings change only when its file or the scope does."""

    fleet: FleetSettings
    has_fleet_file: bool  # fleet.yaml is among the fleet files (valid or not)
    nodes: Mapping[str, NodeFacts]  # declared nodes that passed the per-file checks
    node_files: tuple[str, ...]  # nodes/*.yaml, sorted, valid or not
    # Names of nodes/<name>.yaml files, valid or not (an invalid file is reported on its
    # own; rules should not also call its node missing).
    declared_node_names: frozenset[str]
    nodes_complete: bool  # every node file passed its checks: selection can be trusted
    # memos keyed by selector (and what else the answer depends on), filled as rules ask
    _targeted: dict[tuple[object, ...], list[NodeFacts]] = field(default_factory=dict, repr=False)
    _stranded: dict[tuple[object, ...], list[tuple[str, list[NodeFacts]]]] = field(
        default_factory=dict, repr=False
    )
    _lacking: dict[tuple[object, ...], list[NodeFacts]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        fleet: FleetSettings,
        nodes: Mapping[str, NodeFacts],
        all_paths: Collection[str],
        passed: Container[str],
    ) -> Scope:
        node_files = tuple(sorted(p for p in all_paths if p.startswith("nodes/")))
        return cls(
            fleet=fleet,
            has_fleet_file="fleet.yaml" in all_paths,
            nodes=nodes,
            node_files=node_files,
            declared_node_names=frozenset(p[len("nodes/") : -len(".yaml")] for p in node_files),
            nodes_complete=all(p in passed for p in node_files),
        )

    @staticmethod
    def facts(nodes: Mapping[str, NodeSpec]) -> dict[str, NodeFacts]:
        return {name: NodeFacts.from_spec(n) for name, n in nodes.items()}

    @staticmethod
    def selector(d: Deployable) -> tuple[object, ...]:
        """All that decides which nodes ``d`` targets, and in which order."""
        t = d.targets
        return (t.roles, t.accelerators, tuple(sorted(t.labels.items())), t.nodes, d.rollout.canary)

    def targeted(self, d: Deployable) -> list[NodeFacts]:
        """The declared nodes ``d`` targets (canaries first); computed once per selector."""
        # Keyed by selector, not by file: every version of an agent usually shares its
        # targets, so 5,000 releases x 1,000 nodes cost 100 selections, not 5,000.
        key = self.selector(d)
        found = self._targeted.get(key)
        if found is None:
            found = self._targeted[key] = [self.nodes[n] for n in target_nodes(d, self.nodes)]
        return found

    def stranded(self, d: Deployable) -> list[tuple[str, list[NodeFacts]]]:
        """Per platform (sorted), the targeted nodes ``d`` has no artifact for; once per
        selector and set of artifact platforms (all that ``artifact_for`` looks at)."""
        key = (self.selector(d), frozenset(a.platform for a in d.artifacts))
        found = self._stranded.get(key)
        if found is None:
            missing: dict[str, list[NodeFacts]] = {}
            for node in self.targeted(d):
                if d.artifact_for(node.platform) is None:
                    missing.setdefault(node.platform, []).append(node)
            found = self._stranded[key] = sorted(missing.items())
        return found

    def lacking(self, d: Deployable, label: str) -> list[NodeFacts]:
        """The targeted nodes without label ``label``; once per selector and label."""
        key = (self.selector(d), label)
        found = self._lacking.get(key)
        if found is None:
            found = self._lacking[key] = [n for n in self.targeted(d) if label not in n.labels]
        return found


def violation(
    loaded: LoadedFile | None,
    path: str,
    at: JsonPath,
    message: str,
    *,
    key: bool = False,
    severity: Severity = "error",
    related: Iterable[str] = (),
) -> Violation:
    """A violation in ``path`` at the value (or key) at ``at`` of its parsed file."""
    line, column = loaded.locate(at, key=key) if loaded is not None else (1, 1)
    return Violation(path, line, column, message, severity, tuple(sorted(set(related))))


@dataclass(frozen=True)
class RuleContext:
    files: Mapping[str, LoadedFile]  # files that passed the per-file checks
    all_paths: frozenset[str]  # every fleet file of the set, valid or not
    spec: FleetSpec
    nodes: Mapping[str, NodeFacts]  # declared nodes that passed the per-file checks
    given_scope: Scope | None = field(default=None, repr=False)  # else built from the above

    @classmethod
    def build(cls, files: Mapping[str, LoadedFile], all_paths: Iterable[str]) -> RuleContext:
        spec = build_spec({p: f.value for p, f in files.items()})
        paths = frozenset(all_paths)
        nodes = Scope.facts(spec.nodes)
        scope = Scope.build(spec.fleet, nodes, paths, files)
        return cls(files=files, all_paths=paths, spec=spec, nodes=nodes, given_scope=scope)

    @cached_property
    def scope(self) -> Scope:
        if self.given_scope is not None:
            return self.given_scope
        return Scope.build(self.spec.fleet, self.nodes, self.all_paths, self.files)

    @property
    def node_files(self) -> list[str]:
        return list(self.scope.node_files)

    @property
    def declared_node_names(self) -> set[str]:
        """Names of nodes/<name>.yaml files, valid or not (an invalid file is reported
        on its own; rules should not also call its node missing)."""
        return set(self.scope.declared_node_names)

    @property
    def nodes_complete(self) -> bool:
        """Every node file passed its checks: selection results can be trusted."""
        return self.scope.nodes_complete

    def node_path(self, name: str) -> str:
        return node_path(name)

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
        return violation(
            self.files.get(path), path, at, message, key=key, severity=severity, related=related
        )

    def deployables(self) -> Iterator[tuple[Deployable, dict[str, Any]]]:
        for d in self.spec.deployables:
            yield d, self.files[d.path].value

    def targeted(self, d: Deployable) -> list[NodeFacts]:
        """The declared nodes ``d`` targets (canaries first); computed once per selector."""
        return self.scope.targeted(d)

    def each_file(self, rule: FileRule) -> Iterator[Violation]:
        """``rule`` over every file that passed the per-file checks, in path order."""
        scope = self.scope
        deployables = {d.path: d for d in self.spec.deployables}
        for path, loaded in self.files.items():
            yield from rule(scope, loaded, deployables.get(path))

    def each_deployable(self, rule: DeployableRule) -> Iterator[Violation]:
        """``rule`` over every release and model, in path order."""
        scope = self.scope
        for d in self.spec.deployables:
            yield from rule(scope, d, self.files[d.path])


Rule = Callable[[RuleContext], Iterable[Violation]]
# A rule about one file that sees only that file (its Deployable, when it is a release or a
# model) and the scope; ``PER_FILE`` maps a whole-set rule to the per-file rule it runs.
FileRule = Callable[[Scope, LoadedFile, Deployable | None], Iterable[Violation]]
DeployableRule = Callable[[Scope, Deployable, LoadedFile], Iterable[Violation]]


def for_deployables(rule: DeployableRule) -> FileRule:
    """``rule`` as a FileRule: it judges releases and models only."""

    def per_file(scope: Scope, loaded: LoadedFile, d: Deployable | None) -> Iterable[Violation]:
        return rule(scope, d, loaded) if d is not None else ()

    return per_file


def file_names(ctx: RuleContext) -> Iterator[Violation]:
    """nodes/<name>.yaml, releases/<agent>/<version>.yaml, models/<name>/<version>.yaml."""
    return ctx.each_file(file_names_of)


def file_names_of(scope: Scope, loaded: LoadedFile, d: Deployable | None) -> Iterator[Violation]:
    path = loaded.path
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
        return
    for field_, expected, what in checks:
        if doc.get(field_) != expected:
            yield violation(
                loaded,
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
    return ctx.each_deployable(one_artifact_per_platform_of)


def one_artifact_per_platform_of(
    scope: Scope, d: Deployable, loaded: LoadedFile
) -> Iterator[Violation]:
    first: dict[str, int] = {}
    for i, art in enumerate(d.artifacts):
        if art.platform in first:
            yield violation(
                loaded,
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
    return ctx.each_deployable(artifact_urls_of)


def artifact_urls_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    insecure_ok = scope.fleet.allow_insecure_urls
    for i, art in enumerate(d.artifacts):
        at = ("artifacts", i, "url")
        scheme = urlsplit(art.url).scheme.lower()
        if _CREDENTIALS.match(art.url):
            yield violation(
                loaded,
                d.path,
                at,
                "artifact URL carries credentials (user:password@); they would be "
                "stored in Git. Use a URL that needs none",
            )
        if scheme in ("http", "file") and not insecure_ok:
            yield violation(
                loaded,
                d.path,
                at,
                f"{scheme}:// artifact URL is not allowed; use https:// (or set "
                "allowInsecureURLs: true in fleet.yaml, for labs and tests only)",
                related=["fleet.yaml"] if scope.has_fleet_file else [],
            )
        elif scheme not in ("https", "http", "file"):
            yield violation(loaded, d.path, at, f"unsupported URL scheme {scheme!r}; use https://")
        if "${" in art.url:
            yield violation(
                loaded,
                d.path,
                at,
                "placeholders are not filled in artifact URLs (one URL serves every node "
                "of the platform); write the URL out",
            )


def named_nodes_exist(ctx: RuleContext) -> Iterator[Violation]:
    """targets.nodes and rollout.canary name nodes that have a file in nodes/."""
    return ctx.each_deployable(named_nodes_exist_of)


def named_nodes_exist_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    declared = scope.declared_node_names
    severity: Severity = "error" if declared else "warning"
    doc = loaded.value
    for section, field_ in (("targets", "nodes"), ("rollout", "canary")):
        names = (doc.get(section) or {}).get(field_) or []
        for i, name in enumerate(names):
            if name not in declared:
                tip = _closest(name, declared)
                yield violation(
                    loaded,
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
    return ctx.each_deployable(targets_select_nodes_of)


def targets_select_nodes_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    if not scope.nodes_complete:
        return  # an invalid node file is reported on its own; selection would mislead
    doc = loaded.value
    at = ("targets",) if "targets" in doc else ()
    chosen = scope.targeted(d)
    if not scope.nodes:
        yield violation(
            loaded,
            d.path,
            at,
            "no node files in nodes/: cannot check which nodes this targets",
            key=bool(at),
            severity="warning",
        )
        return
    if not chosen:
        yield violation(
            loaded,
            d.path,
            at,
            f"targets select none of the {len(scope.nodes)} nodes in nodes/ "
            f"({', '.join(sorted(scope.nodes))}); every given selector must match",
            key=bool(at),
            related=scope.node_files,
        )
        return
    chosen_names = {n.name for n in chosen}
    for i, name in enumerate(d.rollout.canary):
        own = (doc.get("rollout") or {}).get("canary")
        if name in scope.nodes and name not in chosen_names:
            yield violation(
                loaded,
                d.path,
                ("rollout", "canary", i) if own else at,
                f"canary {name!r} is not among the nodes the targets select "
                f"({', '.join(sorted(chosen_names))})",
                related=[node_path(name)],
            )


def artifacts_for_targets(ctx: RuleContext) -> Iterator[Violation]:
    """Every targeted node gets an artifact for its platform (else the rollout strands it)."""
    return ctx.each_deployable(artifacts_for_targets_of)


def artifacts_for_targets_of(
    scope: Scope, d: Deployable, loaded: LoadedFile
) -> Iterator[Violation]:
    if not scope.nodes_complete:
        return
    for platform, nodes in scope.stranded(d):
        names = ", ".join(n.name for n in nodes)
        yield violation(
            loaded,
            d.path,
            ("artifacts",),
            f"no artifact for {platform}, but the targets select {names}; add a "
            f"{platform} artifact or narrow the targets",
            key=True,
            related=[node_path(n.name) for n in nodes],
        )


def rollout_sanity(ctx: RuleContext) -> Iterator[Violation]:
    """Timeouts that can be met; batch sizes that mean what they say."""
    return ctx.each_deployable(rollout_sanity_of)


def rollout_sanity_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    doc = loaded.value
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
        yield violation(
            loaded,
            d.path,
            where,
            f"rollout.timeoutSeconds {d.rollout.timeout_seconds}{origin} must be greater "
            f"than health.timeoutSeconds {health_timeout}: a node would be declared "
            "failed before its health check could pass",
        )
    if not scope.nodes_complete or not scope.nodes:
        return
    chosen = scope.targeted(d)
    batch = d.rollout.batch_size
    if isinstance(batch, int) and chosen and batch > len(chosen) and "batchSize" in own:
        yield violation(
            loaded,
            d.path,
            ("rollout", "batchSize"),
            f"batchSize {batch} exceeds the {len(chosen)} targeted node(s): the whole "
            "rollout is one batch",
            severity="warning",
        )
    if chosen and d.rollout.canary and len(set(d.rollout.canary)) >= len(chosen) > 1:
        yield violation(
            loaded,
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
    return ctx.each_deployable(placeholders_of)


def placeholders_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    check_labels = scope.nodes_complete and bool(scope.nodes)
    doc = loaded.value
    for section in ("run", "health", "versionProbe", "args", "drain"):
        for at, text in _strings(doc.get(section), (section,)):
            for m in _ANY_PLACEHOLDER.finditer(text):
                known = _KNOWN.match(m[1])
                if known is None:
                    yield violation(
                        loaded,
                        d.path,
                        at,
                        f"unknown placeholder ${{{m[1]}}}; use ${{node.name}} or "
                        "${node.labels.KEY}",
                    )
                    continue
                label = known[2]
                if label is None:
                    continue
                lacking = scope.lacking(d, label) if check_labels else []
                if lacking:
                    yield violation(
                        loaded,
                        d.path,
                        at,
                        f"${{node.labels.{label}}} but targeted node(s) "
                        f"{', '.join(n.name for n in lacking)} have no label {label!r}",
                        related=[node_path(n.name) for n in lacking],
                    )


def fleet_defaults(ctx: RuleContext) -> Iterator[Violation]:
    """A canary in fleet-wide defaults would apply to every release: name real nodes."""
    loaded = ctx.files.get("fleet.yaml")
    if loaded is None:
        return
    canary = ((loaded.value.get("defaults") or {}).get("rollout") or {}).get("canary") or []
    declared = ctx.scope.declared_node_names
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

# The rules of RULES that judge one file at a time (the others: unique_names, fleet_defaults).
PER_FILE: dict[Rule, FileRule] = {
    file_names: file_names_of,
    one_artifact_per_platform: for_deployables(one_artifact_per_platform_of),
    artifact_urls: for_deployables(artifact_urls_of),
    named_nodes_exist: for_deployables(named_nodes_exist_of),
    targets_select_nodes: for_deployables(targets_select_nodes_of),
    artifacts_for_targets: for_deployables(artifacts_for_targets_of),
    rollout_sanity: for_deployables(rollout_sanity_of),
    placeholders: for_deployables(placeholders_of),
}
