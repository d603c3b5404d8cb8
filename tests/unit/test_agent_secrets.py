"""The agent's secrets on disk (agent/secrets.py) and the supervisors that cannot hold
``as: env`` values safely."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.errors import SupervisorError
from agent.secrets import SecretError, check_secrets, digest, is_current, materialize, prune
from agent.supervise.service import launchd_plist, systemd_unit
from agent.supervise.supervisor import LaunchSpec
from fleetkeeper_common.age import encrypt, generate_identity

ME, OTHER = generate_identity(), generate_identity()


def doc(value: bytes, *, to: str = ME.recipient, name: str = "token") -> dict[str, object]:
    sealed = encrypt(value, [to]).decode()
    return {
        "name": "app",
        "secrets": [
            {"name": "API_KEY", "from": "secrets/k.age", "as": "env", "age": sealed},
            {"name": name, "from": "secrets/k.age", "as": "file", "age": sealed},
        ],
    }


def test_materialize_lays_out_env_file_and_digest(tmp_path: Path) -> None:
    d = doc(b"s3cret\n")
    extra, env_file = materialize(tmp_path, "1.0.0", d, ME)
    where = Path(extra["FLEETKEEPER_SECRETS_DIR"])
    assert where == tmp_path / "secrets" / "1.0.0"
    assert (where / "token").read_bytes() == b"s3cret\n"  # a file keeps its bytes
    assert stat.S_IMODE(where.stat().st_mode) == 0o700
    assert stat.S_IMODE((where / "token").stat().st_mode) == 0o600
    assert env_file is not None and json.loads(env_file.read_text()) == {"API_KEY": "s3cret"}
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert is_current(tmp_path, "1.0.0", d) and not is_current(tmp_path, "1.0.0", doc(b"x"))
    assert digest(d) != digest(doc(b"s3cret\n"))  # another ciphertext of the same value
    # a rotation replaces the directory whole
    extra, _ = materialize(tmp_path, "1.0.0", doc(b"new"), ME)
    assert (where / "token").read_bytes() == b"new"
    prune(tmp_path, keep=set())
    assert list((tmp_path / "secrets").iterdir()) == []


def test_not_a_recipient_and_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        SecretError, match=r"cannot decrypt secrets/k.age: this node is not a recipient"
    ):
        check_secrets(doc(b"x", to=OTHER.recipient), ME)
    with pytest.raises(SecretError, match="no age identity"):
        check_secrets(doc(b"x"), None)
    with pytest.raises(SecretError, match="not a plain file name"):
        materialize(tmp_path, "1.0.0", doc(b"x", name="../escape"), ME)
    assert not (tmp_path / "escape").exists()


def test_service_supervisors_refuse_env_secrets(tmp_path: Path) -> None:
    spec = LaunchSpec("app", ("bin/app",), tmp_path, {}, None, tmp_path / "1.0.0.env")
    with pytest.raises(SupervisorError, match="as: env need the child supervisor"):
        systemd_unit(spec, tmp_path / "log")
    with pytest.raises(SupervisorError, match="as: env need the child supervisor"):
        launchd_plist("app", spec, tmp_path / "log")
