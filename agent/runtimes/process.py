"""The plain runtime: ``run.command`` from the release, relative to the unpacked root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from agent import isolation
from agent.errors import WorkloadError
from agent.runtimes.base import HealthResult, VersionProbe, WorkloadDoc
from agent.runtimes.http_health import check_http


def resolve_program(program: str, version_dir: Path) -> str:
    """``program`` relative to ``version_dir`` (absolute and bare command names kept as given).

    A bare name (no '/') that exists in the version dir is taken from there; otherwise it is
    left for PATH lookup (e.g. ``python3``).
    """
    if Path(program).is_absolute():
        return program  # only reachable when allowedPrograms lists it (agent.policy)
    candidate = version_dir / program
    if "/" in program or candidate.exists():
        # resolved: a link inside the artifact must not lead out of the version directory
        if not candidate.resolve().is_relative_to(version_dir.resolve()):
            raise WorkloadError(f"program {program!r} resolves outside {version_dir}")
        return str(candidate)
    return program


class ProcessRuntime:
    """Runs ``run.command`` with ``run.env``; health from ``health.http``; ``versionProbe``."""

    name = "process"

    def command(
        self, workload: WorkloadDoc, version_dir: Path, state_dir: Path
    ) -> tuple[list[str], dict[str, str]]:
        run = workload.get("run")
        if not run or not run.get("command"):
            raise WorkloadError(
                f"workload {workload.get('name')!r} has no run.command; "
                "add run: {command: [...]} to its release"
            )
        argv = [str(a) for a in run["command"]]
        argv[0] = resolve_program(argv[0], version_dir)
        if "/" in argv[0] and not Path(argv[0]).exists():
            raise WorkloadError(
                f"workload {workload.get('name')!r}: program {run['command'][0]!r} "
                f"not found in {version_dir}"
            )
        env = {str(k): str(v) for k, v in (run.get("env") or {}).items()}
        return argv, env

    def check_health(self, workload: WorkloadDoc, timeout: float) -> HealthResult:
        url = (workload.get("health") or {}).get("http")
        if not url:
            return HealthResult(True, "no health check configured (process running counts)")
        return check_http(str(url), timeout)

    def probe_version(
        self, workload: WorkloadDoc, version_dir: Path, timeout: float
    ) -> VersionProbe:
        probe = workload.get("versionProbe")
        if not probe:
            return VersionProbe(configured=False, ok=True, output="", message="no versionProbe")
        argv = [str(a) for a in probe]
        argv[0] = resolve_program(argv[0], version_dir)
        # The probe is the workload's own program: same clean environment, same user.
        name = str(workload.get("name"))
        run_env = {
            str(k): str(v) for k, v in ((workload.get("run") or {}).get("env") or {}).items()
        }
        try:
            wanted = isolation.effective_user(workload, None)
            user = isolation.lookup_user(wanted) if wanted else None
            home = user.home if user else isolation.own_home()
            proc = subprocess.run(
                argv,
                cwd=version_dir,
                env=isolation.workload_env(name, run_env, home=home, agent_env=os.environ),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
                **isolation.popen_user_kwargs(user),
            )
        except WorkloadError as exc:
            return VersionProbe(True, False, "", str(exc))
        except (OSError, subprocess.SubprocessError) as exc:
            return VersionProbe(True, False, "", f"versionProbe {argv}: {exc}")
        output = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0:
            return VersionProbe(
                True, False, output, f"versionProbe {argv} exited {proc.returncode}"
            )
        return VersionProbe(True, True, output)


RUNTIME = ProcessRuntime()
