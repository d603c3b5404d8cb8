"""Reading gpg's machine status lines (``--status-fd``), shared by the reconciler and the agent.

``gpg --import`` exits 2 when it cannot reach a gpg-agent, which happens whenever the
GNUPGHOME path is too long for a Unix socket (about 100 bytes: state directories deep in
a tree, pytest's temporary directories), even though every public key was imported. The
status line ``IMPORT_RES`` says what really happened, so that is what is judged.
"""

from __future__ import annotations

import re

PREFIX = "[GNUPG:] "
_COUNT = re.compile(r"[0-9]+")  # ASCII digits only: int() would also take "-1", " 1", "١"


def status_lines(out: str) -> list[list[str]]:
    """The ``[GNUPG:]`` lines of gpg's status output, each split into keyword and fields."""
    return [ln[len(PREFIX) :].split(" ") for ln in out.splitlines() if ln.startswith(PREFIX)]


def import_succeeded(code: int, out: str) -> bool:
    """True when ``gpg --status-fd 1 --import`` took every key it read and refused none.

    An ``IMPORT_RES`` line whose counts are not plain numbers (odd or hostile output) is a
    refusal, not a crash: the caller reports the import as failed, naming the keyring.
    """
    if code == 0:
        return True
    for fields in status_lines(out):
        if fields[0] != "IMPORT_RES" or len(fields) < 15:
            continue
        if not all(_COUNT.fullmatch(f) for f in fields[1:15]):
            return False
        count, imported, unchanged, not_imported = (
            int(fields[1]),
            int(fields[3]),
            int(fields[5]),
            int(fields[14]),
        )
        return count > 0 and not_imported == 0 and imported + unchanged == count
    return False
