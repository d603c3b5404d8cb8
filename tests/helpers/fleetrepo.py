"""``FleetRepo``: a real git repo whose every change lands on ``main`` through a ``--no-ff``
merge (approved under ``merged-pr``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.helpers.fleetdocs import Doc
from tests.helpers.git import commit_all, git, head, init_repo


@dataclass
class FleetRepo:
    """A real work-tree git repo; ``change`` lands files on ``main`` via a --no-ff merge."""

    path: Path
    branch: str = "main"
    _n: int = field(default=0)

    @classmethod
    def create(cls, path: Path, files: Mapping[str, Doc] | None = None) -> FleetRepo:
        init_repo(path)
        (path / "README.md").write_text("fleet repo for tests\n")
        commit_all(path, "initial commit")
        repo = cls(path)
        if files:
            repo.change(files, "initial fleet")
        return repo

    def write(self, files: Mapping[str, Doc | str | bytes]) -> None:
        """A dict is written as YAML; ``str``/``bytes`` as they are (an age file, a
        recipients list, a config file, broken YAML)."""
        for rel, doc in files.items():
            p = self.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(doc, bytes):
                p.write_bytes(doc)
            elif isinstance(doc, str):
                p.write_text(doc)
            else:
                p.write_text(yaml.safe_dump(doc, sort_keys=False))

    def change(
        self, files: Mapping[str, Doc | str | bytes], message: str, *, remove: Sequence[str] = ()
    ) -> str:
        """Commit ``files`` (and delete ``remove``) on a topic branch, merge it; the merge sha."""
        self._n += 1
        topic = f"change-{self._n}"
        git(self.path, "checkout", "-q", "-b", topic)
        self.write(files)
        for rel in remove:
            git(self.path, "rm", "-q", rel)
        commit_all(self.path, message)
        git(self.path, "checkout", "-q", self.branch)
        git(
            self.path,
            "merge",
            "-q",
            "--no-ff",
            "--no-edit",
            "-m",
            f"Merge {topic}: {message}",
            topic,
        )
        return head(self.path)

    def direct_commit(self, files: Mapping[str, Doc | str | bytes], message: str) -> str:
        """A single-parent commit on main (not approved under merged-pr without a signature)."""
        self.write(files)
        return commit_all(self.path, message)

    def head(self) -> str:
        return head(self.path)
