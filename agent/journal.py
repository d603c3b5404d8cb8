"""The update journal of one workload (``<stateDir>/journal/<name>.json``), the only reader
and writer of that file.

Written before ``current`` is flipped and removed once the new version is proven (or rolled
back), so an agent killed in between finishes the proof or the rollback at its next start
instead of guessing. ``fromPrevious`` is what ``previous`` pointed at before the first
attempt: a retry after a kill between two flips must not take the half-flipped value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.state import StateDir, read_json, write_json


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Journal:
    to: str | None  # the version being installed
    sha256: str | None
    back: str | None  # the version to flip back to ("from")
    from_previous: str | None
    doc_key: str | None
    # A journal without fromPrevious (an older agent's) does not say what previous was.
    knows_previous: bool = True

    @classmethod
    def read(cls, state: StateDir, name: str) -> Journal | None:
        doc = read_json(state.journal_file(name))
        if not isinstance(doc, dict):
            return None
        return cls(
            _text(doc.get("to")),
            _text(doc.get("sha256")),
            _text(doc.get("from")),
            _text(doc.get("fromPrevious")),
            _text(doc.get("docKey")),
            "fromPrevious" in doc,
        )

    def write(self, state: StateDir, name: str) -> None:
        write_json(
            state.journal_file(name),
            {
                "to": self.to,
                "sha256": self.sha256,
                "from": self.back,
                "fromPrevious": self.from_previous,
                "docKey": self.doc_key,
            },
        )

    @staticmethod
    def clear(state: StateDir, name: str) -> None:
        state.journal_file(name).unlink(missing_ok=True)
