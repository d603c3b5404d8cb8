"""An age file reaches the nodes, so changing one needs approval like a fleet file: a
ciphertext anyone can make (node recipients are public) pushed straight to main is refused."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.approval import evaluate
from reconciler.config import ApprovalSettings
from reconciler.source import GitSource
from tests.helpers.fleetfiles import basic_fleet
from tests.helpers.git import git
from tests.helpers.keys import Keys, SignedRepo, close_keys, session_keys

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is missing")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    yield session_keys(tmp_path_factory)
    close_keys()


def encrypted(plain: bytes, tmp: Path) -> str:
    key = tmp / f"key-{len(list(tmp.glob('key-*')))}"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    r = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True)
    argv = ["age", "-a", "-r", r.stdout.decode().strip()]
    return subprocess.run(argv, input=plain, check=True, capture_output=True).stdout.decode()


def test_direct_push_of_a_secret_is_refused(tmp_path: Path, keys: Keys) -> None:
    repo = SignedRepo(tmp_path / "fleet", keys)
    merge = repo.merge({**basic_fleet(), "secrets/app/key.age": encrypted(b"good", tmp_path)})
    # the attack, with plumbing: a new blob at secrets/app/key.age, committed on main
    blob = (
        subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=repo.path,
            input=encrypted(b"attacker's key", tmp_path).encode(),
            check=True,
            capture_output=True,
        )
        .stdout.decode()
        .strip()
    )
    git(repo.path, "update-index", "--cacheinfo", f"100644,{blob},secrets/app/key.age")
    git(repo.path, "commit", "-q", "--no-verify", "-m", "rotate key")
    direct = repo.head()
    state = tmp_path / "state"
    settings = ApprovalSettings(allowed_signers=keys.allowed_signers, gpg_keyring=keys.gpg_keyring)
    result = evaluate(GitSource(str(repo.path), state, "main"), settings, None, state)
    assert result.revision == merge
    assert [r.revision for r in result.refused] == [direct]
    assert result.refused[0].reason.startswith(
        f"Unapproved: {direct} changes secrets/app/key.age without a merge"
    )
