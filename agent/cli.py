"""``fleetkeeper-agent`` command line (not built yet)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    print("fleetkeeper-agent: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
