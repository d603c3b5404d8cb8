"""Fencing: the database refuses a loop write from a replica that no longer leads.

The advisory lock says who *may* lead; it cannot stop a deposed leader whose pass is
still running (its lock died with its connection, but its pool connections live on).
So leadership also has a row, ``fleetkeeper_leader (epoch, holder)``: a replica that
takes the lock first bumps the epoch and writes its incarnation (a random id per
process) as holder. Every connection of a replica carries that incarnation as the
setting ``fleetkeeper.replica`` (``PGOPTIONS``), and triggers on the tables only the
loop writes (rollout state, desired documents, applied revisions, loop meta, the
loop's audit kinds) compare it with the holder *in the same transaction*, taking a
share lock on the row: a write is either committed before the new leader's bump (and
then the new leader, which reads the store after it, sees it) or refused after it.
Sessions without the setting (a CLI command, ``store migrate``) are not replicas and
are not fenced.
"""

from __future__ import annotations

import hashlib

from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow

from reconciler.plan.controls import ACTIONS

SETTING = "fleetkeeper.replica"


def _key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


LEADER_LOCK = _key("fleetkeeper leader")
SETUP_LOCK = _key("fleetkeeper replica setup")

# Audit kinds the API writes on any replica (registrations, join tokens, node resets,
# an operator's rollout controls); every other kind comes from the loop and is fenced.
API_AUDIT_KINDS = (
    "registered",
    "registration-refused",
    "join-token-created",
    "join-token-revoked",
    "node-reset",
    *(f"rollout-{a}" for a in ACTIONS),
)

# table -> the statements the loop makes on it (deletes of desired documents come from
# a node reset, on any replica)
FENCED: tuple[tuple[str, str], ...] = (
    ("rollouts", "INSERT OR UPDATE OR DELETE"),
    ("desired", "INSERT OR UPDATE"),
    ("applied_revisions", "INSERT"),
    ("meta", "INSERT OR UPDATE OR DELETE"),
)

TABLES = (
    """CREATE TABLE IF NOT EXISTS fleetkeeper_leader (
        id integer PRIMARY KEY CHECK (id = 1),
        epoch bigint NOT NULL,
        holder text,
        since double precision
    )""",
    "INSERT INTO fleetkeeper_leader (id, epoch) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    """CREATE TABLE IF NOT EXISTS fleetkeeper_replicas (
        name text PRIMARY KEY,
        incarnation text NOT NULL,
        url text NOT NULL,
        started_at double precision NOT NULL,
        last_seen double precision NOT NULL
    )""",
)

FENCE_FUNCTION = """CREATE OR REPLACE FUNCTION fleetkeeper_fence() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    me text := current_setting('fleetkeeper.replica', true);
    leader text;
BEGIN
    IF coalesce(me, '') <> '' THEN
        -- FOR SHARE: a takeover (UPDATE of this row) waits for this transaction to end
        SELECT holder INTO leader FROM fleetkeeper_leader WHERE id = 1 FOR SHARE;
        IF leader IS DISTINCT FROM me THEN
            RAISE EXCEPTION 'fenced: replica % does not lead (the leader is %): % on % refused',
                me, coalesce(leader, 'nobody'), TG_OP, TG_TABLE_NAME;
        END IF;
    END IF;
    IF TG_LEVEL = 'ROW' THEN
        RETURN NEW;
    END IF;
    RETURN NULL;
END $$"""


async def install(conn: AsyncConnection[TupleRow]) -> None:
    """Create the leader and replica tables and the fencing triggers (idempotent; two
    replicas starting at once take turns on an advisory lock). Tables the store has not
    created are skipped. When everything is in place already nothing is replaced:
    replacing a trigger locks its table against the leader's writes."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
        for statement in TABLES:
            await conn.execute(statement)
        if await _installed(conn):
            return
        await conn.execute(FENCE_FUNCTION)
        for table, events in FENCED:
            if not await _exists(conn, table):
                continue
            await conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER {} BEFORE {} ON {} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION fleetkeeper_fence()"
                ).format(
                    sql.Identifier(f"fleetkeeper_fence_{table}"),
                    sql.SQL(events),
                    sql.Identifier(table),
                )
            )
        if await _exists(conn, "audit"):
            kinds = sql.SQL(", ").join(sql.Literal(k) for k in API_AUDIT_KINDS)
            await conn.execute(
                sql.SQL(
                    "CREATE OR REPLACE TRIGGER fleetkeeper_fence_audit BEFORE INSERT ON audit "
                    "FOR EACH ROW WHEN (NEW.kind NOT IN ({})) EXECUTE FUNCTION fleetkeeper_fence()"
                ).format(kinds)
            )


async def _installed(conn: AsyncConnection[TupleRow]) -> bool:
    """This version's function, and a trigger on every fenced table the store has."""
    cur = await conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'fleetkeeper_fence'")
    rows = await cur.fetchall()
    body = FENCE_FUNCTION.split("$$")[1]
    if [r[0] for r in rows] != [body]:
        return False
    cur = await conn.execute(
        "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = 'fleetkeeper_fence_' || c.relname"
    )
    have = {str(r[0]) for r in await cur.fetchall()}
    want = {t for t, _ in FENCED} | {"audit"}
    for table in want - have:
        if await _exists(conn, table):
            return False
    # the audit trigger of an older version lets fewer kinds through: replace it
    cur = await conn.execute(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'fleetkeeper_fence_audit'"
    )
    defs = [str(r[0]) for r in await cur.fetchall()]
    return all(all(f"'{k}'" in d for k in API_AUDIT_KINDS) for d in defs)


async def _exists(conn: AsyncConnection[TupleRow], table: str) -> bool:
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    row = await cur.fetchone()
    return bool(row and row[0])


def pgoptions(existing: str | None, incarnation: str) -> str:
    """``PGOPTIONS`` with this process's incarnation added (every libpq connection of
    the process, the store's pool included, then carries it)."""
    return f"{existing or ''} -c {SETTING}={incarnation}".strip()
