"""Reading secret files (tokens, webhook secret). Kept apart from ``config`` so the
light CLI commands (``status``, ``audit``) need not import the schema machinery."""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import ConfigError


def read_secret(path: Path, what: str) -> str:
    """The stripped contents of a secret file; ``what`` names the setting in errors."""
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    if not value:
        raise ConfigError(f"{what}: {path} is empty")
    return value
