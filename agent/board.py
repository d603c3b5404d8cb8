"""Shared, thread-safe record of what the converge step is doing per workload.

The converge thread writes phases and messages; the reporter reads them together with
fresh observations. A change wakes the reporter so phases reach the reconciler promptly.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Note:
    phase: str | None = None
    message: str | None = None
    desired_version: str | None = None


class Board:
    def __init__(self) -> None:
        self._notes: dict[str, Note] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()

    def set(self, name: str, **fields: str | None) -> None:
        with self._lock:
            self._notes[name] = replace(self._notes.get(name, Note()), **fields)
        self.changed.set()

    def get(self, name: str) -> Note:
        with self._lock:
            return self._notes.get(name, Note())

    def drop(self, name: str) -> None:
        with self._lock:
            self._notes.pop(name, None)
        self.changed.set()
