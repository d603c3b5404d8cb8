"""The ledger of failed targets: which (version, sha256, desired document) failed here.

A target that failed is not retried until what is desired for that workload changes (its
``docKey``: version, artifact, configuration and ``retryGeneration``, see
:func:`agent.workload.doc_key`): a bad digest, an unsafe archive or a version that does
not prove itself will not fix itself. Kept in ``<stateDir>/failed.json`` (one entry per
workload, so it survives agent restarts), the only reader and writer of that file's entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agent.board import Board
from agent.state import StateDir
from agent.workload import Outcome


@dataclass(frozen=True)
class FailedTarget:
    version: str | None
    sha256: str | None
    docKey: str | None  # noqa: N815 (the stored key's name)
    phase: str
    message: str

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> FailedTarget:
        def text(key: str) -> str | None:
            value = entry.get(key)
            return None if value is None else str(value)

        return cls(
            text("version"),
            text("sha256"),
            text("docKey"),
            str(entry.get("phase")),
            str(entry.get("message")),
        )

    def is_target(self, version: str, sha256: str, key: str) -> bool:
        """This exact target (version, digest, desired document) is the one that failed."""
        return (self.version, self.sha256, self.docKey) == (version, sha256, key)


class Ledger:
    def __init__(self, state: StateDir) -> None:
        self.state = state

    def get(self, name: str) -> FailedTarget | None:
        entry = self.state.read_failed().get(name)
        return FailedTarget.from_json(entry) if isinstance(entry, dict) else None

    def remember(self, name: str, failed: FailedTarget) -> None:
        entries = self.state.read_failed()
        entries[name] = asdict(failed)
        self.state.write_failed(entries)

    def rekey(self, name: str, old_key: str, new_key: str) -> None:
        """An entry stored under ``old_key`` (an older agent's key) is kept as ``new_key``."""
        entries = self.state.read_failed()
        entry = entries.get(name)
        if isinstance(entry, dict) and entry.get("docKey") == old_key:
            entries[name] = {**entry, "docKey": new_key}
            self.state.write_failed(entries)

    def forget(self, name: str) -> None:
        entries = self.state.read_failed()
        if entries.pop(name, None) is not None:
            self.state.write_failed(entries)


def replay_failure(board: Board, name: str, failed: FailedTarget, version: str) -> Outcome:
    """Report a remembered failure of ``version`` again instead of retrying it."""
    board.set(name, phase=failed.phase, message=failed.message, desired_version=version)
    return Outcome(False, failed.phase, failed.message, {})
