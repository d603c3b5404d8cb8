"""``fleetkeeper serve`` with signing turned off: the baseline of ``fleet_scale.py --signed``.

Not a benchmark itself. ``serve`` always signs (there is no setting to turn it off, on
purpose); to measure what signing adds to merge -> every agent holds the new document, the
same server runs here with a hub that has no signer, as the code did before issue 13. Only
the benchmark uses this.
"""

from __future__ import annotations

import sys

from reconciler.api.context import ApiContext
from reconciler.cli import main

_load = ApiContext.load.__func__  # type: ignore[attr-defined]


def _unsigned_load(cls: type[ApiContext], *args: object, **kwargs: object) -> ApiContext:
    args = args[:3]  # (store, settings, metrics): the signer is dropped
    kwargs.pop("signer", None)
    return _load(cls, *args, **kwargs)  # type: ignore[no-any-return]


ApiContext.load = classmethod(_unsigned_load)  # type: ignore[assignment,method-assign]

if __name__ == "__main__":
    sys.exit(main())
