"""`fleetkeeper store migrate --from sqlite:///... --to postgresql://...`: move an installation.

Stop ``fleetkeeper serve`` first, migrate, then point ``database:`` at the new URL and start
it again (see docs/server.md, "PostgreSQL"). Prints the rows copied per table.
"""

from __future__ import annotations

import argparse
from typing import Any

from reconciler.errors import ConfigError
from reconciler.store import redact_url


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "store", help="the reconciler's database: migrate SQLite to PostgreSQL"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = actions.add_parser(
        "migrate",
        help="copy every table (the whole audit history, ids and times kept) into an empty "
        "PostgreSQL database",
    )
    migrate.add_argument(
        "--from", dest="source", required=True, metavar="URL", help="sqlite:///path/state.db"
    )
    migrate.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="postgresql://user@host:port/db (empty; password from a pgpass file or PGPASSWORD)",
    )
    migrate.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    try:
        from reconciler.store.transfer import migrate_sqlite_to_postgres
    except ImportError as exc:  # the base install has no PostgreSQL driver
        raise ConfigError(
            f"store migrate needs the PostgreSQL driver ({exc}): pip install 'fleetkeeper[server]'"
        ) from exc

    counts = migrate_sqlite_to_postgres(args.source, args.target)
    width = max((len(t) for t in counts), default=0)
    for table, n in sorted(counts.items()):
        print(f"{table:<{width}}  {n}")
    print(
        f"copied {sum(counts.values())} rows from {redact_url(args.source)} to "
        f"{redact_url(args.target)}; set database: to the new URL and start fleetkeeper serve"
    )
    return 0
