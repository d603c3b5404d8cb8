"""The one CLI error handler of both commands (``fleetkeeper``, ``fleetkeeper-agent``).

Exit codes: 1 the user's input is wrong or an action failed (the error is printed, one line),
3 a bug (the traceback goes to the log, with a pointer to it), 130 on Ctrl-C. Usage errors
(2) are argparse's own.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable

EXIT_USER = 1
EXIT_BUG = 3
EXIT_INTERRUPTED = 130


def run_command(
    prog: str, action: Callable[[], int], user_errors: tuple[type[Exception], ...]
) -> int:
    """Run ``action`` and turn what it raises into an exit code and a message for people."""
    try:
        return action()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except user_errors as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USER
    except Exception:  # the one place a bug becomes exit 3, with the traceback logged
        logging.getLogger(prog).error("internal error\n%s", traceback.format_exc())
        print(
            f"{prog}: internal error (a bug); the traceback is above. Please report it.",
            file=sys.stderr,
        )
        return EXIT_BUG
