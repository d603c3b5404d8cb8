"""Versioned schema migrations of the SQLite store.

Each entry is (version, statements). A database records every applied version in
``schema_migrations``; opening a database runs the missing ones in order, each in its
own transaction, and refuses a database written by a newer fleetkeeper.
Never edit a released migration: append a new one.
"""

from __future__ import annotations

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            """CREATE TABLE meta (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )""",
            """CREATE TABLE applied_revisions (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                sha TEXT NOT NULL,
                approval TEXT NOT NULL,
                applied_at REAL NOT NULL
            )""",
            """CREATE TABLE audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                time REAL NOT NULL,
                kind TEXT NOT NULL,
                message TEXT NOT NULL,
                revision TEXT,
                release TEXT,
                node TEXT,
                details TEXT NOT NULL
            )""",
            "CREATE INDEX audit_by_time ON audit (time)",
            """CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                facts TEXT NOT NULL,
                token_hash TEXT NOT NULL,
                registered_at REAL NOT NULL
            )""",
            """CREATE TABLE desired (
                node TEXT PRIMARY KEY,
                generation INTEGER NOT NULL,
                etag TEXT NOT NULL,
                document TEXT NOT NULL
            )""",
            """CREATE TABLE reports (
                node TEXT PRIMARY KEY,
                report TEXT NOT NULL,
                received_at REAL NOT NULL
            )""",
            """CREATE TABLE rollouts (
                name TEXT PRIMARY KEY,
                state TEXT NOT NULL
            )""",
            # The history tables are append-only: the database itself refuses edits.
            """CREATE TRIGGER audit_append_only_u BEFORE UPDATE ON audit
               BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
            """CREATE TRIGGER audit_append_only_d BEFORE DELETE ON audit
               BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END""",
            """CREATE TRIGGER revisions_append_only_u BEFORE UPDATE ON applied_revisions
               BEGIN SELECT RAISE(ABORT, 'applied revisions are append-only'); END""",
            """CREATE TRIGGER revisions_append_only_d BEFORE DELETE ON applied_revisions
               BEGIN SELECT RAISE(ABORT, 'applied revisions are append-only'); END""",
        ),
    ),
    (
        2,
        (
            # When the reconciler first saw a commit or tag object whose signature it judges:
            # key validity is judged then, never at a date the object claims (issue 10).
            """CREATE TABLE observed_objects (
                sha TEXT PRIMARY KEY,
                first_seen REAL NOT NULL
            )""",
            """CREATE TRIGGER observed_append_only_u BEFORE UPDATE ON observed_objects
               BEGIN SELECT RAISE(ABORT, 'first observations are never rewritten'); END""",
        ),
    ),
    (
        3,
        (
            # Join tokens (issue 10): only the sha256 of the secret is kept. A token is
            # scoped to one node name or to a role/label set (JSON), or to nothing (then
            # only names declared in nodes/ may use it).
            """CREATE TABLE join_tokens (
                id TEXT PRIMARY KEY,
                token_hash TEXT NOT NULL UNIQUE,
                created_at REAL NOT NULL,
                expires_at REAL NOT NULL,
                uses INTEGER NOT NULL,
                used INTEGER NOT NULL DEFAULT 0,
                node TEXT,
                roles TEXT,
                labels TEXT,
                revoked_at REAL
            )""",
            # How a node got its credential (the join token's id and scope): the planner
            # trusts an unlisted node's roles and labels only as far as that scope.
            "ALTER TABLE nodes ADD COLUMN admission TEXT NOT NULL DEFAULT '{}'",
        ),
    ),
    (
        4,
        (
            # Operator rollout controls (issue 16): pause, resume, retry, promote, skip-node,
            # each with who and why; the planner folds them in order of seq. Append-only: a
            # control is undone by another (resume), never by editing history.
            """CREATE TABLE rollout_controls (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                name TEXT NOT NULL,
                action TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                node TEXT,
                actor TEXT NOT NULL,
                reason TEXT NOT NULL,
                at REAL NOT NULL
            )""",
            """CREATE TRIGGER controls_append_only_u BEFORE UPDATE ON rollout_controls
               BEGIN SELECT RAISE(ABORT, 'rollout controls are append-only'); END""",
            """CREATE TRIGGER controls_append_only_d BEFORE DELETE ON rollout_controls
               BEGIN SELECT RAISE(ABORT, 'rollout controls are append-only'); END""",
        ),
    ),
)

LATEST = MIGRATIONS[-1][0]
