"""Leader election, fencing and wake-ups between replicas, on a real PostgreSQL server.

Each ``Leadership`` holds its own connection, as a replica does; a partition is made
for real with ``pg_terminate_backend`` of that connection; the deposed leader's late
write is made on a connection that carries its incarnation, as its store pool does.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import psycopg
import pytest

from reconciler.replicas import fencing
from reconciler.replicas.bus import Bus, Message, decode, encode
from reconciler.replicas.leader import Leadership
from tests.helpers.postgres import PostgresServer

LEASE = 2.0  # ticks of 0.2 s


def loop_tables(url: str) -> None:
    """The tables the store's migrations make, as far as fencing cares."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE rollouts (name text PRIMARY KEY, state text NOT NULL)")
        conn.execute("CREATE TABLE audit (id bigserial PRIMARY KEY, kind text NOT NULL)")
        conn.execute("CREATE TABLE reports (node text PRIMARY KEY, seen double precision)")


def as_replica(url: str, incarnation: str) -> psycopg.Connection[tuple[object, ...]]:
    """A connection like the replica's pool opens: its incarnation in the session."""
    return psycopg.connect(url, autocommit=True, options=f"-c {fencing.SETTING}={incarnation}")


async def until(check: Callable[[], bool], timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def with_replicas(
    url: str,
    names: list[str],
    body: Callable[[list[Leadership], dict[str, asyncio.Event]], Awaitable[None]],
) -> None:
    stops = {n: asyncio.Event() for n in names}
    replicas = [Leadership(url, n, f"inc-{n}", LEASE) for n in names]
    tasks = [asyncio.create_task(r.run(stops[r.name])) for r in replicas]
    try:
        await body(replicas, stops)
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.gather(*tasks)


def test_one_leader_and_a_takeover_after_its_connection_is_cut(
    postgres: PostgresServer, postgres_url: str
) -> None:
    loop_tables(postgres_url)

    async def body(rs: list[Leadership], stops: dict[str, asyncio.Event]) -> None:
        await until(lambda: sum(r.leading for r in rs) == 1, LEASE, "a leader")
        await asyncio.sleep(LEASE / 2)  # several ticks: still exactly one
        assert sum(r.leading for r in rs) == 1
        old = next(r for r in rs if r.leading)
        epoch = old.epoch
        await until(lambda: len(old.replicas) == 3, LEASE, "every replica row")
        assert [r.name for r in old.replicas if r.leader] == [old.name]
        cut = postgres.terminate_backends(postgres_url, f"fleetkeeper-leader {old.name}")
        assert cut == 1
        started = time.monotonic()
        await until(lambda: not old.leading, LEASE, "the cut-off leader steps down")
        # a new term (the old replica may win it again: its session ended, not its process)
        await until(
            lambda: any(r.leading and (r.epoch or 0) > (epoch or 0) for r in rs),
            LEASE,
            "a new leader",
        )
        took = time.monotonic() - started
        print(f"takeover after pg_terminate_backend: {took * 1000:.0f} ms")
        assert took < LEASE
        await asyncio.sleep(LEASE / 2)
        assert sum(r.leading for r in rs) == 1  # the old one reconnected as a follower

    asyncio.run(with_replicas(postgres_url, ["a", "b", "c"], body))


def test_a_deposed_leaders_write_is_refused_by_the_database(
    postgres: PostgresServer, postgres_url: str
) -> None:
    loop_tables(postgres_url)

    async def body(rs: list[Leadership], stops: dict[str, asyncio.Event]) -> None:
        await until(lambda: any(r.leading for r in rs), LEASE, "a leader")
        old = next(r for r in rs if r.leading)
        other = next(r for r in rs if r is not old)
        pool = as_replica(postgres_url, old.incarnation)  # the old leader's store connection
        pool.execute("INSERT INTO rollouts VALUES ('hello@1', 'batch 0')")
        # a transaction in flight when the takeover comes: the takeover waits for it
        with pool.transaction():
            pool.execute("UPDATE rollouts SET state = 'batch 1'")
            stops[old.name].set()  # partitioned for good: its election never comes back
            postgres.terminate_backends(postgres_url, f"fleetkeeper-leader {old.name}")
            await asyncio.sleep(LEASE / 2)
            assert not other.leading  # its UPDATE of the leader row waits for our commit
        await until(lambda: other.leading, LEASE, "the other replica leads")
        with pytest.raises(psycopg.errors.RaiseException, match="fenced: replica inc-"):
            pool.execute("UPDATE rollouts SET state = 'batch 2'")
        with pytest.raises(psycopg.errors.RaiseException, match="INSERT on audit refused"):
            pool.execute("INSERT INTO audit (kind) VALUES ('rollout-step')")
        # what any replica's API writes is not the loop's: allowed on a follower
        pool.execute("INSERT INTO audit (kind) VALUES ('registered')")
        pool.execute("INSERT INTO reports VALUES ('gpu-1', 1.0)")
        with as_replica(postgres_url, other.incarnation) as leader:
            leader.execute("UPDATE rollouts SET state = 'batch 2 (new leader)'")
        with psycopg.connect(postgres_url, autocommit=True) as operator:  # not a replica
            operator.execute("INSERT INTO audit (kind) VALUES ('migrated')")
            rows = operator.execute("SELECT state FROM rollouts").fetchall()
            kinds = [k for (k,) in operator.execute("SELECT kind FROM audit ORDER BY id")]
        assert rows == [("batch 2 (new leader)",)]  # batch 1 committed before the takeover
        assert kinds == ["registered", "migrated"]
        pool.close()

    asyncio.run(with_replicas(postgres_url, ["a", "b"], body))


def test_replicas_reelect_after_postgresql_restarts(
    postgres: PostgresServer, postgres_url: str
) -> None:
    loop_tables(postgres_url)

    async def body(rs: list[Leadership], stops: dict[str, asyncio.Event]) -> None:
        await until(lambda: any(r.leading for r in rs), LEASE, "a leader")
        await asyncio.to_thread(postgres.restart, "fast", 1.0)
        await until(lambda: not any(r.leading for r in rs), LEASE, "nobody leads while down")
        await until(lambda: sum(r.leading for r in rs) == 1, 3 * LEASE, "a leader again")
        await asyncio.sleep(LEASE / 2)
        assert sum(r.leading for r in rs) == 1

    asyncio.run(with_replicas(postgres_url, ["a", "b"], body))


def test_two_replicas_install_fencing_at_the_same_moment(postgres_url: str) -> None:
    loop_tables(postgres_url)

    async def body(rs: list[Leadership], stops: dict[str, asyncio.Event]) -> None:
        await until(lambda: all(r.connected for r in rs), LEASE, "both connected")

    def triggers() -> list[tuple[object, ...]]:
        with psycopg.connect(postgres_url) as conn:
            return conn.execute(
                "SELECT tgname, xmin::text FROM pg_trigger "
                "WHERE tgname LIKE 'fleetkeeper_fence_%' ORDER BY 1"
            ).fetchall()

    asyncio.run(with_replicas(postgres_url, [f"r{i}" for i in range(4)], body))
    first = triggers()
    assert [name for name, _ in first] == ["fleetkeeper_fence_audit", "fleetkeeper_fence_rollouts"]
    # a replica starting later finds them in place and replaces nothing (a replaced
    # trigger would lock its table against the leader's writes)
    asyncio.run(with_replicas(postgres_url, ["late"], body))
    assert triggers() == first


def test_an_older_audit_fence_is_replaced_so_a_follower_may_record_a_control(
    postgres_url: str,
) -> None:
    """A database fenced by a version whose API wrote no rollout controls: its audit
    trigger refused ``rollout-pause`` from a follower (HTTP 500); a replica starting
    now replaces it."""
    loop_tables(postgres_url)

    async def body(rs: list[Leadership], stops: dict[str, asyncio.Event]) -> None:
        await until(lambda: all(r.connected for r in rs), LEASE, "connected")

    asyncio.run(with_replicas(postgres_url, ["a"], body))
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE TRIGGER fleetkeeper_fence_audit BEFORE INSERT ON audit "
            "FOR EACH ROW WHEN (NEW.kind NOT IN ('registered')) "
            "EXECUTE FUNCTION fleetkeeper_fence()"
        )
    with (
        as_replica(postgres_url, "inc-follower") as follower,
        pytest.raises(psycopg.errors.RaiseException, match="INSERT on audit refused"),
    ):
        follower.execute("INSERT INTO audit (kind) VALUES ('rollout-pause')")
    asyncio.run(with_replicas(postgres_url, ["b"], body))
    with as_replica(postgres_url, "inc-follower") as follower:
        for action in ("pause", "resume", "retry", "promote", "skip-node"):
            follower.execute("INSERT INTO audit (kind) VALUES (%s)", (f"rollout-{action}",))
        with pytest.raises(psycopg.errors.RaiseException, match="INSERT on audit refused"):
            follower.execute("INSERT INTO audit (kind) VALUES ('control-applied')")  # the loop's


def test_payloads_stay_under_the_notify_limit() -> None:
    nodes = [f"node-{i:05d}" for i in range(3000)]
    payloads = encode("desired", nodes, "me")
    assert len(payloads) > 1 and all(len(p.encode()) < 8000 for p in payloads)
    back = [decode(p) for p in payloads]
    assert [n for m in back if m is not None for n in m.nodes] == nodes
    assert decode("not json") is None and decode('{"kind": "other", "nodes": []}') is None


def test_a_wake_up_crosses_replicas_within_200_ms(postgres_url: str) -> None:
    async def body() -> list[float]:
        stop = asyncio.Event()
        got: asyncio.Queue[tuple[Message, float]] = asyncio.Queue()
        connected = asyncio.Event()

        async def on_connect() -> None:
            connected.set()

        b = Bus(postgres_url, "replica-b")
        a = Bus(postgres_url, "replica-a")
        task = asyncio.create_task(
            b.listen(stop, lambda m: got.put_nowait((m, time.monotonic())), on_connect)
        )
        await asyncio.wait_for(connected.wait(), 5)
        latencies = []
        b.send("desired", ["own-message"])  # a replica ignores what it sent itself
        for i in range(20):
            sent = time.monotonic()
            await asyncio.to_thread(a.send, "desired", [f"gpu-{i}"])
            message, at = await asyncio.wait_for(got.get(), 5)
            assert message == Message("desired", (f"gpu-{i}",), "replica-a")
            latencies.append(at - sent)
        stop.set()
        await task
        a.close()
        b.close()
        return latencies

    latencies = asyncio.run(body())
    p50, worst = statistics.median(latencies), max(latencies)
    print(f"NOTIFY wake-up across replicas: p50 {p50 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert worst < 1.0  # the target is 200 ms; generous on a shared 2-core machine
