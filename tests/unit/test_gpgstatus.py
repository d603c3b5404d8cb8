"""gpg --import judged by its status lines, not its exit code alone (exit 2 with every key
imported is what gpg does when the GNUPGHOME path is too long for its agent socket)."""

from __future__ import annotations

import pytest

from fleetkeeper_common.gpgstatus import import_succeeded

ONE_IMPORTED = "[GNUPG:] IMPORT_OK 1 CB12\n[GNUPG:] IMPORT_RES 1 0 1 0 0 0 0 0 0 0 0 0 0 0 0\n"
ONE_UNCHANGED = "[GNUPG:] IMPORT_RES 1 0 0 0 1 0 0 0 0 0 0 0 0 0 0\n"
ONE_REFUSED = "[GNUPG:] IMPORT_RES 2 0 1 0 0 0 0 0 0 0 0 0 0 1 0\n"
NOTHING = "[GNUPG:] IMPORT_RES 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"


@pytest.mark.parametrize(
    ("code", "out", "ok"),
    [
        (0, "", True),
        (2, ONE_IMPORTED, True),  # agent socket path too long: the key is in
        (2, ONE_UNCHANGED, True),
        (2, ONE_REFUSED, False),  # a key gpg would not take
        (2, NOTHING, False),  # an empty or unreadable keyring file
        (2, "", False),
        (2, "[GNUPG:] IMPORT_RES 1 0 1\n", False),  # truncated: not judged
        # counts that are not plain numbers are a refusal, never a ValueError
        (2, "[GNUPG:] IMPORT_RES x 0 1 0 0 0 0 0 0 0 0 0 0 0 0\n", False),
        (2, "[GNUPG:] IMPORT_RES 1 0 1 0 0 0 0 0 0 0 0 0 0 zero 0\n", False),
        (2, "[GNUPG:] IMPORT_RES 1 0 2 0 -1 0 0 0 0 0 0 0 0 0 0\n", False),  # 2 + -1 == 1
        (2, "[GNUPG:] IMPORT_RES 1 0 1 0 0 0 0 0 0 0 0 0 0 \u0660 0\n", False),  # Arabic zero
        (2, "[GNUPG:] IMPORT_RES 1 0 1 0 0 0 0 0 0 0 0 0 0  0\n", False),  # empty field
    ],
)
def test_import_judged_by_import_res(code: int, out: str, ok: bool) -> None:
    assert import_succeeded(code, out) is ok
