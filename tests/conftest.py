"""Suite-wide guards: a clean environment, a fake $HOME that must stay untouched, git identity."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# the throwaway PostgreSQL server (fixtures ``postgres``, ``postgres_url``) and the signing
# keys (fixture ``keys``): one per session
pytest_plugins = ["tests.helpers.postgres", "tests.helpers.keys"]

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Fleet Tester",
    "GIT_AUTHOR_EMAIL": "tester@fleet.test",
    "GIT_COMMITTER_NAME": "Fleet Tester",
    "GIT_COMMITTER_EMAIL": "tester@fleet.test",
    "GIT_ALLOW_PROTOCOL": "file",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}
_DROP = ("FLEETKEEPER_", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GNUPGHOME", "SSH_AUTH_SOCK")


@pytest.fixture(autouse=True, scope="session")
def _clean_environ(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No user config leaks in (httpx's clean_environ); HOME points at an empty folder."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(_DROP) or key in (
            "http_proxy",
            "https_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
        ):
            del os.environ[key]
    home = tmp_path_factory.mktemp("home")
    os.environ["HOME"] = str(home)
    os.environ["GIT_CONFIG_GLOBAL"] = str(home / ".gitconfig-empty")
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    os.environ.update(GIT_ENV)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _dont_write_to_home(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that writes into $HOME (pre-commit's dont_write_to_home_directory)."""
    home = Path(os.environ["HOME"])
    before = sorted(p.name for p in home.iterdir()) if home.exists() else []
    yield
    after = sorted(p.name for p in home.iterdir()) if home.exists() else []
    assert after == before, f"{request.node.nodeid} wrote to $HOME: {set(after) - set(before)}"
