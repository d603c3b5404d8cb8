"""How fast is `fleetkeeper validate` against check-jsonschema on the same release files?

Generates fleet repos of 1,000 and 10,000 release files (1 in 100 invalid), then times, as
subprocesses from a cold start, wall clock:

- `fleetkeeper validate` on the repo (YAML pitfalls, schema, cross-file rules, line numbers);
- `check-jsonschema --schemafile <exported release schema>` on the same release files (schema
  only; the self-contained copy `fleetkeeper schema export` writes);

and prints both times, the ratio and how many problems each reported. Also prints the
in-process time of `validate_files` alone (no interpreter start-up).

    .venv/bin/python bench/validate.py [COUNT ...]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reconciler.validate import validate_files
from schema import bundled

BIN = Path(sys.executable).parent
NODES = 10


def release(agent: str, version: str, valid: bool) -> str:
    sha = "ab" * 32 if valid else "NOT-A-DIGEST"
    return f"""\
apiVersion: fleetkeeper/v1
kind: Release
agent: {agent}
version: {version}
artifacts:
  - platform: linux/amd64
    url: https://dl.example.org/{agent}/{version}/{agent}-linux-amd64.tar.gz
    sha256: {sha}
    size: 12345678
  - platform: darwin/arm64
    url: https://dl.example.org/{agent}/{version}/{agent}-darwin-arm64.tar.gz
    sha256: {"cd" * 32}
    size: 12345678
run:
  command: [bin/{agent}, --port, "${{node.labels.port}}"]
  env: {{LOG_LEVEL: info}}
health:
  http: http://127.0.0.1:${{node.labels.port}}/healthz
  timeoutSeconds: 60
versionProbe: [bin/{agent}, --version]
targets:
  roles: [inference]
rollout:
  batchSize: "25%"
  canary: [node-0]
  soakSeconds: 300
  timeoutSeconds: 900
  onFailure: halt
"""


def node(i: int) -> str:
    platform = "linux/amd64" if i % 2 else "darwin/arm64"
    return f"""\
apiVersion: fleetkeeper/v1
kind: Node
name: node-{i}
platform: {platform}
accelerator: {"cuda" if i % 2 else "metal"}
roles: [inference]
labels: {{port: "80{i:02d}"}}
"""


def generate(root: Path, count: int) -> list[Path]:
    (root / "nodes").mkdir(parents=True)
    (root / "fleet.yaml").write_text("apiVersion: fleetkeeper/v1\nkind: Fleet\nname: bench\n")
    for i in range(NODES):
        (root / "nodes" / f"node-{i}.yaml").write_text(node(i))
    paths = []
    per_agent = 10
    for i in range(count):
        agent, version = f"agent-{i // per_agent}", f"1.{i % per_agent}.0"
        folder = root / "releases" / agent
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{version}.yaml"
        path.write_text(release(agent, version, valid=i % 100 != 7))
        paths.append(path)
    return paths


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], cwd: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall and CPU seconds of a subprocess (CPU is steadier on a busy machine)."""
    cpu = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, _children_cpu() - cpu, proc


def bench(count: int, workdir: Path) -> None:
    root = workdir / f"fleet-{count}"
    paths = generate(root, count)
    schema_file = workdir / "release.bundled.schema.json"
    schema_file.write_text(json.dumps(bundled("release")))

    fk_time, fk_cpu, fk = timed([str(BIN / "fleetkeeper"), "validate", "--format", "json"], root)
    fk_report = json.loads(fk.stdout)
    cj_argv = [str(BIN / "check-jsonschema"), "--schemafile", str(schema_file)]
    cj_argv += [str(p.relative_to(root)) for p in paths]
    cj_time, cj_cpu, cj = timed(cj_argv, root)
    cj_problems = sum(1 for line in cj.stdout.splitlines() if "::$" in line)

    files = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in [root / "fleet.yaml", *sorted((root / "nodes").iterdir()), *paths]
    }
    start, start_cpu = time.perf_counter(), time.process_time()
    report = validate_files(files)
    core, core_cpu = time.perf_counter() - start, time.process_time() - start_cpu

    print(f"{count} release files ({count // 100} invalid), {NODES} nodes")
    print(
        f"  fleetkeeper validate   {fk_time:7.2f} s wall {fk_cpu:7.2f} s CPU  "
        f"exit {fk.returncode}  "
        f"{fk_report['errors']} errors with path:line:column (+ cross-file rules)"
    )
    print(
        f"  check-jsonschema       {cj_time:7.2f} s wall {cj_cpu:7.2f} s CPU  "
        f"exit {cj.returncode}  "
        f"{cj_problems} errors with JSON path only"
    )
    print(
        f"  ratio                  {cj_time / fk_time:7.1f}x faster (wall), "
        f"{cj_cpu / fk_cpu:.1f}x (CPU)"
    )
    print(
        f"  validate_files alone   {core:7.2f} s wall {core_cpu:7.2f} s CPU  "
        f"({len(files) / core_cpu:,.0f} files/s CPU, "
        f"{len(report.errors)} errors)"
    )
    example = next((v for v in report.errors), None)
    if example is not None:
        print(f"  e.g. {example}")
    shutil.rmtree(root)


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [1000, 10000]
    with tempfile.TemporaryDirectory(prefix="fleetkeeper-bench-") as tmp:
        for count in counts:
            bench(count, Path(tmp))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main(sys.argv[1:]))
