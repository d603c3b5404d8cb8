"""`fleetkeeper serve` on PostgreSQL end to end: three real agents, two releases rolled out,
PostgreSQL restarted in between (the replica reconnects; /readyz says when it cannot),
and a restart of the reconciler that resumes from the database without re-applying."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import psycopg

from tests.helpers.operator_fleet import NODES, operated_fleet
from tests.helpers.postgres import PostgresServer
from tests.helpers.server import restart


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as db:
        return list(db.execute(query).fetchall())  # type: ignore[arg-type]


def test_serve_rolls_out_on_postgresql_through_a_database_restart(
    tmp_path: Path, postgres: PostgresServer, postgres_url: str
) -> None:
    with operated_fleet(tmp_path, extra_config={"database": postgres_url}) as fleet:
        assert "(store postgresql://***@127.0.0.1:" in fleet.server.logs()
        fleet.release("1.0.0")
        fleet.wait_release("1.0.0", "Succeeded")
        assert _rows(postgres_url, "SELECT count(*) FROM desired") == [(len(NODES),)]

        postgres.stop("fast")
        with httpx.Client(base_url=fleet.server.url, timeout=15) as c:
            started = time.monotonic()
            r = c.get("/readyz")
            assert r.status_code == 503 and "store unreachable" in r.text, r.text
            assert time.monotonic() - started < 10  # a load balancer learns it promptly
            postgres.start()
            deadline = time.monotonic() + 20
            while c.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "never ready again after the restart"
                time.sleep(0.2)

        fleet.release("1.1.0")  # the loop, the API and the agents' reports all reconnect
        fleet.wait_release("1.1.0", "Succeeded", timeout=60)
        steps = _rows(
            postgres_url,
            "SELECT count(*) FROM audit WHERE kind IN ('rollout-started', 'succeeded')",
        )
        assert steps == [(4,)]  # each release started and succeeded, once
        generations = _rows(postgres_url, "SELECT node, generation FROM desired ORDER BY node")
        applied = _rows(postgres_url, "SELECT count(*) FROM applied_revisions")

        # a restart resumes from the database: nothing applied again, no document rewritten
        again = restart(fleet.server)
        try:
            again.fleet()
            time.sleep(2)  # a few passes of the loop (pollIntervalSeconds 0.5)
            assert _rows(postgres_url, "SELECT count(*) FROM applied_revisions") == applied
            assert (
                _rows(postgres_url, "SELECT node, generation FROM desired ORDER BY node")
                == generations
            )
        finally:
            assert again.stop() == 0, again.logs()
