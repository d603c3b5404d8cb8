"""The stage step: download, verify and unpack one workload's version into ``versions/<v>``.

A version directory is complete or absent: the artifact is unpacked into a staging
directory, then renamed into place with a marker holding its verified SHA-256. A version
already installed with the same digest is not fetched again; one installed with another
digest is refused while it is ``current`` (a release must not change under a version name).
"""

from __future__ import annotations

import logging
import shutil
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from agent.board import Board
from agent.download import fetch
from agent.errors import VerifyError
from agent.installed import Installed
from agent.unpack import unpack
from agent.workload import Workload

log = logging.getLogger(__name__)


def stage(
    w: Workload,
    installed: Installed,
    board: Board,
    timings: dict[str, float],
    *,
    superseded: Callable[[], bool] | None = None,
) -> None:
    """Make ``versions/<w.version>`` hold the verified artifact; phase times into ``timings``.

    ``superseded`` says whether a newer desired document has arrived: the download stops
    (:class:`agent.errors.Superseded`).
    """
    name, version, sha = w.name, w.version, w.artifact.sha256
    layout = installed.layout(name)
    present = layout.installed_sha256(version)
    if present == sha:
        board.set(name, phase="Staged", message=None)
        timings.update(download=0.0, verify=0.0, unpack=0.0)
        return
    if present is not None:
        if layout.current_version() == version:
            raise VerifyError(
                f"{name} {version} is installed with sha256 {present} but the release "
                f"now says {sha}; publish the change as a new version"
            )
        shutil.rmtree(layout.version_dir(version), ignore_errors=True)
    if w.artifact.size is None:
        raise VerifyError(
            f"{name} {version}: the artifact has no size; a download without a bound is "
            "refused (artifacts[].size is required)"
        )
    board.set(name, phase="Downloading", message=None)
    got = fetch(
        w.artifact.url,
        layout.downloads,
        sha256=sha,
        size=w.artifact.size,
        on_phase=lambda phase: board.set(name, phase=phase),
        superseded=superseded,
    )
    timings["download"], timings["verify"] = got.seconds, got.verify_seconds
    if got.size >= 8 << 20:
        log.info(
            "%s %s: %d MiB downloaded in %.2fs, verified in %.2fs",
            name,
            version,
            got.size >> 20,
            got.seconds,
            got.verify_seconds,
        )
    t = time.monotonic()
    staging = layout.staging_dir()
    filename = Path(urllib.parse.urlsplit(w.artifact.url).path).name or name
    try:
        unpack(got.path, staging, filename=filename, unpacked_size=w.artifact.unpacked_size)
        layout.commit_staged(staging, version, sha)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        got.path.unlink(missing_ok=True)
    # Partial downloads of other artifacts will not be resumed any more.
    for stale in layout.downloads.glob("*.part"):
        stale.unlink(missing_ok=True)
    installed.save_launch_doc(name, version, w.doc)
    timings["unpack"] = time.monotonic() - t
    board.set(name, phase="Staged")
