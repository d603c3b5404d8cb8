"""An age file reaches the nodes, so changing one needs approval like a fleet file: a
ciphertext anyone can make (node recipients are public) pushed straight to main is refused."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pygit2
import pytest

from fleetkeeper_common.age import encrypt, generate_identity
from reconciler.approval import evaluate
from reconciler.config import ApprovalSettings
from reconciler.revision import load_revision
from reconciler.source import GitSource
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc, release_doc
from tests.helpers.fleetfiles import basic_fleet
from tests.helpers.git import git
from tests.helpers.keys import Keys, SignedRepo

pytestmark = pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is missing")


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


def test_reconciler_refuses_a_merged_revision_whose_target_is_not_a_recipient(
    tmp_path: Path,
) -> None:
    """The reconciler runs `secret check` on the approved tree before it applies it: a
    merged pull request that adds a target the secret is not encrypted to is not applied."""
    n1, n2 = generate_identity(), generate_identity()
    nodes = {
        f"nodes/{n}.yaml": {**node_doc(n, roles=["coding"]), "ageRecipient": i.recipient}
        for n, i in (("n1", n1), ("n2", n2))
    }
    rel = release_doc("app", "1.0.0", roles=["coding"], command=["bin/app"])
    rel["secrets"] = [{"name": "API_KEY", "from": "secrets/app/key.age"}]
    repo = FleetRepo.create(
        tmp_path / "fleet",
        {
            "fleet.yaml": fleet_doc(),
            "nodes/n1.yaml": nodes["nodes/n1.yaml"],
            "releases/app/1.0.0.yaml": rel,
            "secrets/app/key.age": encrypt(b"k", [n1.recipient]).decode(),
            "secrets/app/key.recipients": f"{n1.recipient} # node n1\n",
        },
    )
    git_repo = pygit2.Repository(str(repo.path))
    good = load_revision(git_repo, str(git_repo.head.target))
    assert good.ok, good.violations
    (d,) = good.spec.deployables if good.spec else ()
    assert d.secrets[0].ciphertext.startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    sha = repo.change({"nodes/n2.yaml": nodes["nodes/n2.yaml"]}, "add n2")
    bad = load_revision(git_repo, sha)
    assert not bad.ok
    assert any("is not encrypted to targeted node(s) n2" in v.message for v in bad.violations)
