"""ConfigDirs: what a killed agent leaves behind is removed before the next converge."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from agent.configdir import ConfigDirs, DesiredConfig


def _config(text: str) -> DesiredConfig:
    data = text.encode()
    block = {
        "digest": hashlib.sha256(data).hexdigest()[:16],
        "files": [
            {
                "path": "soul.md",
                "sha256": hashlib.sha256(data).hexdigest(),
                "content": base64.b64encode(data).decode(),
            }
        ],
    }
    return DesiredConfig.parse({"name": "w", "config": block})


def test_clean_leftovers_removes_a_killed_writes_staging_dir_and_keeps_the_current(
    tmp_path: Path,
) -> None:
    dirs = ConfigDirs(tmp_path / "w")
    config = _config("round 1\n")
    dirs.flip(dirs.write(config))
    # a kill inside write (files half written, no marker) and inside _point (a temp link)
    half = dirs.configs / ".staging-0123456789ab"
    half.mkdir()
    (half / "soul.md").write_text("rou")
    (dirs.dir / ".config.tmp-deadbeef").symlink_to("configs/nowhere")
    dirs.clean_leftovers()
    assert sorted(p.name for p in dirs.configs.iterdir()) == [config.key]
    assert not (dirs.dir / ".config.tmp-deadbeef").is_symlink()
    assert (dirs.link / "soul.md").read_text() == "round 1\n"


def test_clean_leftovers_on_a_workload_without_config_does_nothing(tmp_path: Path) -> None:
    ConfigDirs(tmp_path / "w").clean_leftovers()
    assert not (tmp_path / "w").exists()
