"""Real signing keys for tests: OpenSSH (ssh-keygen) and OpenPGP (gpg), made once per session.

    def test_x(keys: Keys) -> None:            # the session fixture (tests/conftest.py)
    keys = session_keys(tmp_path_factory)      # or cached by hand, outside a fixture
    keys.ssh_sign_args("alice")                # git -c ... options to sign as alice
    signed_commit(repo, keys, "forge", "msg")  # commit -S; signed_tag(...) for tag -s

SSH principals: alice, bob and forge (the forge's merge-signing key) are allowed;
``expired`` is allowed only before 2020 (``valid-before``); mallory is unknown.
OpenPGP: carol is in the pinned keyring, eve is not. Keys are made in temporary homes;
$HOME is never written. ``close_keys()`` stops the gpg-agent the signing home started.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.git import commit_all, git, init_repo

SSH_ALLOWED = ("alice", "bob", "forge")
SSH_EXPIRED = "expired"
SSH_UNKNOWN = "mallory"
GPG_ALLOWED = "carol"
GPG_UNKNOWN = "eve"
EXPIRED_BEFORE = "20200101"


def _run(argv: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


@dataclass(frozen=True)
class SshKey:
    principal: str
    private: Path
    public: str  # "ssh-ed25519 AAAA... comment"


@dataclass(frozen=True)
class GpgKey:
    email: str
    fingerprint: str


@dataclass
class Keys:
    root: Path
    gnupg_home: Path  # holds the secret OpenPGP keys of carol and eve (the signers' side)
    ssh: dict[str, SshKey] = field(default_factory=dict)
    gpg: dict[str, GpgKey] = field(default_factory=dict)
    allowed_signers: Path = Path()
    gpg_keyring: Path = Path()

    def signer_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GNUPGHOME"] = str(self.gnupg_home)
        return env

    def sign_args(self, who: str) -> list[str]:
        """``git`` options that make ``commit -S`` / ``tag -s`` sign as ``who``."""
        if who in self.ssh:
            return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.ssh[who].private}"]
        key = self.gpg[who]
        return ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={key.fingerprint}"]

    def allowed_signers_file(self, principals: tuple[str, ...], name: str) -> Path:
        """Another allowed_signers file with only ``principals`` (all valid at any time)."""
        path = self.root / name
        path.write_text("".join(f'{p} namespaces="git" {self.ssh[p].public}\n' for p in principals))
        return path


def _make_ssh(root: Path, name: str) -> SshKey:
    private = root / "ssh" / name
    private.parent.mkdir(parents=True, exist_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(private)])
    public = Path(f"{private}.pub").read_text().strip()
    return SshKey(principal=f"{name}@fleet.test", private=private, public=public)


def _make_gpg(home: Path, name: str) -> GpgKey:
    email = f"{name}@fleet.test"
    env = {**os.environ, "GNUPGHOME": str(home)}
    _run(
        [
            "gpg",
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            f"{name.title()} <{email}>",
            "ed25519",
            "sign",
            "never",
        ],
        env=env,
    )
    out = _run(["gpg", "--batch", "--with-colons", "--list-keys", email], env=env)
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    return GpgKey(email=email, fingerprint=fpr)


def make_keys(root: Path) -> Keys:
    home = root / "gnupg"
    home.mkdir(parents=True, mode=0o700)
    keys = Keys(root=root, gnupg_home=home)
    for name in (*SSH_ALLOWED, SSH_EXPIRED, SSH_UNKNOWN):
        keys.ssh[name] = _make_ssh(root, name)
    for name in (GPG_ALLOWED, GPG_UNKNOWN):
        keys.gpg[name] = _make_gpg(home, name)
    lines = [f'{keys.ssh[n].principal} namespaces="git" {keys.ssh[n].public}' for n in SSH_ALLOWED]
    exp = keys.ssh[SSH_EXPIRED]
    lines.append(f'{exp.principal} namespaces="git",valid-before="{EXPIRED_BEFORE}" {exp.public}')
    keys.allowed_signers = root / "allowed_signers"
    keys.allowed_signers.write_text("\n".join(lines) + "\n")
    keys.gpg_keyring = root / "trusted.asc"
    keys.gpg_keyring.write_text(
        _run(
            ["gpg", "--batch", "--armor", "--export", keys.gpg[GPG_ALLOWED].fingerprint],
            env=keys.signer_env(),
        )
    )
    return keys


_session: Keys | None = None


def session_keys(factory: pytest.TempPathFactory) -> Keys:
    """The suite's keys, made on first use (about a second) and shared by every test."""
    global _session
    if _session is None:
        _session = make_keys(factory.mktemp("keys"))
    return _session


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keys]:
    """The suite's keys (``session_keys``); the signing home's gpg-agent stopped at the end."""
    yield session_keys(tmp_path_factory)
    close_keys()


def close_keys() -> None:
    """Stop the gpg-agent of the signing home (call at session end)."""
    if _session is not None:
        subprocess.run(
            ["gpgconf", "--homedir", str(_session.gnupg_home), "--kill", "all"],
            capture_output=True,
            check=False,
        )


def signed_commit(repo: Path, keys: Keys, who: str, message: str, *extra: str) -> str:
    """Commit what is staged (``git add`` first) signed by ``who``; the new sha."""
    _git_signed(repo, keys, who, "commit", "-q", "--no-verify", "-S", "-m", message, *extra)
    return git(repo, "rev-parse", "HEAD").stdout.strip()


def signed_tag(
    repo: Path, keys: Keys, who: str, name: str, target: str = "HEAD", *, date: str | None = None
) -> str:
    """An annotated tag signed by ``who`` (tagger time ``date``, e.g. "@1700000000 +0000")."""
    _git_signed(repo, keys, who, "tag", "-s", "-m", f"deploy {name}", name, target, date=date)
    return git(repo, "rev-parse", f"refs/tags/{name}").stdout.strip()


def _git_signed(repo: Path, keys: Keys, who: str, *args: str, date: str | None = None) -> None:
    env = keys.signer_env()
    if date is not None:
        env["GIT_COMMITTER_DATE"] = date
    proc = subprocess.run(
        ["git", *keys.sign_args(who), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} as {who} failed:\n{proc.stderr}")


class SignedRepo:
    """A work-tree repo on ``main`` whose changes land as merges, direct commits or signed
    single-parent commits (a forge's squash merge), for approval tests."""

    def __init__(self, path: Path, keys: Keys) -> None:
        self.path = init_repo(path)
        self.keys = keys
        self._n = 0
        (path / "README.md").write_text("fleet\n")
        self.root = commit_all(path, "initial commit")

    def _write(self, files: dict[str, str], remove: tuple[str, ...]) -> None:
        for rel, text in files.items():
            p = self.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        for rel in remove:
            git(self.path, "rm", "-q", rel)
        git(self.path, "add", "-A")

    def head(self) -> str:
        return git(self.path, "rev-parse", "HEAD").stdout.strip()

    def merge(
        self,
        files: dict[str, str],
        message: str = "change",
        *,
        remove: tuple[str, ...] = (),
        signer: str | None = None,
    ) -> str:
        """A topic branch merged with ``--no-ff`` (signed by ``signer`` when given)."""
        self._n += 1
        topic = f"topic-{self._n}"
        git(self.path, "checkout", "-q", "-b", topic)
        self._write(files, remove)
        git(self.path, "commit", "-q", "--no-verify", "-m", message)
        git(self.path, "checkout", "-q", "main")
        args = ("merge", "-q", "--no-ff", "--no-edit", "-m", f"Merge {topic}: {message}", topic)
        if signer is None:
            git(self.path, *args)
        else:
            _git_signed(self.path, self.keys, signer, *args[:1], "-S", *args[1:])
        return self.head()

    def direct(
        self, files: dict[str, str], message: str = "direct", *, remove: tuple[str, ...] = ()
    ) -> str:
        """A single-parent commit pushed straight to main, unsigned."""
        self._write(files, remove)
        git(self.path, "commit", "-q", "--no-verify", "--allow-empty", "-m", message)
        return self.head()

    def signed(
        self,
        files: dict[str, str],
        signer: str,
        message: str = "squash",
        *,
        remove: tuple[str, ...] = (),
    ) -> str:
        """A single-parent commit signed by ``signer`` (a forge's squash or rebase merge)."""
        self._write(files, remove)
        return signed_commit(self.path, self.keys, signer, message)
