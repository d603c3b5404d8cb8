"""The approval settings: how the reconciler judges commits (from its config, never the repo).

Beside the pure decision that reads them (``decide``), so that judging imports no config
loader, YAML or secrets; ``reconciler.config`` builds them from the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEFAULT_TAG_PATTERN = "deploy/*"

ApprovalMode = Literal["merged-pr", "signed-tag"]


@dataclass(frozen=True)
class ApprovalSettings:
    mode: ApprovalMode = "merged-pr"
    tag_pattern: str = DEFAULT_TAG_PATTERN
    threshold: int = 1
    require_signed_merges: bool = False
    allowed_signers: Path | None = None
    gpg_keyring: Path | None = None
    # the operator-pinned commit where judging starts (it and its ancestors are trusted)
    baseline: str | None = None
