"""Real ``fleetkeeper serve`` replicas on a real PostgreSQL: leadership, wake-ups, status."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from reconciler.forges import sign
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.fleet import fleet_doc, node_doc
from tests.helpers.fleetrepo import FleetRepo
from tests.helpers.postgres import PostgresServer, database_of
from tests.helpers.replicas import client_ports, replica_set
from tests.helpers.server import DEFAULT_FILES, register_doc, write_config

PORT = {"port": "18080"}


def test_one_leader_serves_status_and_a_follower_takes_over(
    tmp_path: Path, postgres_url: str
) -> None:
    repo = FleetRepo.create(tmp_path / "fleet", DEFAULT_FILES)
    with replica_set(tmp_path, repo, postgres_url, 2) as rs:
        leader = rs.wait_leader()
        follower = 1 - leader
        assert rs.leads(follower) is False
        doc = rs.fleet(follower)
        replicas = {r["url"]: r for r in doc["replicas"]}
        assert replicas[rs.urls[leader]]["leader"] is True
        assert replicas[rs.urls[follower]]["leader"] is False
        out = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", "status", "--server", rs.urls[follower]],
            capture_output=True,
            text=True,
            env={**os.environ, "FLEETKEEPER_TOKEN": rs.admin_token, "COLUMNS": "200"},
        )
        assert "Reconcilers" in out.stdout and "leader" in out.stdout, out.stdout + out.stderr
        started = time.monotonic()
        rs.kill(leader)
        assert rs.wait_leader(timeout=2 * 2) == follower  # within leaderLeaseSeconds (2)
        print(f"takeover after SIGKILL: {time.monotonic() - started:.2f}s")


def test_a_long_poll_on_a_follower_wakes_when_the_leader_changes_a_document(
    tmp_path: Path, postgres_url: str
) -> None:
    files = {"fleet.yaml": fleet_doc(), "nodes/node-a.yaml": node_doc("node-a", labels=PORT)}
    repo = FleetRepo.create(tmp_path / "fleet", files)
    (tmp_path / "dist").mkdir()
    art = build_program(tmp_path / "dist", "hello", "1.0.0")
    with replica_set(tmp_path, repo, postgres_url, 2) as rs:
        leader = rs.wait_leader()
        follower = 1 - leader
        with httpx.Client(base_url=rs.urls[follower], timeout=30) as c:
            r = c.post(
                "/v1/nodes/node-a/register",
                json=register_doc("node-a"),
                headers={"Authorization": f"Bearer {rs.bootstrap_token}"},
            )
            assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        # the token issued by the follower opens the leader's API too (a "nodes" wake-up)
        deadline = time.monotonic() + 5
        while True:
            d = httpx.get(f"{rs.urls[leader]}/v1/nodes/node-a/desired", headers=auth)
            if d.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert d.status_code == 200, d.text
        etag = d.headers["etag"]
        returned: dict[int, float] = {}

        def poll(i: int) -> None:
            with httpx.Client(base_url=rs.urls[i], headers=auth, timeout=60) as c:
                got = c.get(
                    "/v1/nodes/node-a/desired", params={"wait": 30}, headers={"If-None-Match": etag}
                )
            returned[i] = time.monotonic()
            assert got.status_code == 200, got.text
            assert got.headers["etag"] != etag

        threads = [threading.Thread(target=poll, args=(i,)) for i in (leader, follower)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both are waiting
        release = hello_release("1.0.0", art, art.path.as_uri())
        release["targets"] = {"nodes": ["node-a"]}
        merged = time.monotonic()
        repo.change({"releases/hello/1.0.0.yaml": release}, "release hello 1.0.0")
        for t in threads:
            t.join(timeout=40)
        assert set(returned) == {leader, follower}, returned
        behind = returned[follower] - returned[leader]
        print(
            f"merge -> leader's long-poll {returned[leader] - merged:.3f}s; "
            f"the follower's {behind * 1000:.0f} ms later"
        )
        assert behind < 1.0  # the target is 200 ms; generous on a shared 2-core machine


WRITERS = (
    "CREATE TABLE test_writes (replica text, tab text, at timestamptz DEFAULT clock_timestamp())",
    """CREATE FUNCTION test_log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO test_writes (replica, tab)
    VALUES (current_setting('fleetkeeper.replica', true), TG_TABLE_NAME);
    RETURN NULL;
END $$""",
)


def test_a_leader_cut_off_from_the_database_stops_leading_and_writing(
    tmp_path: Path, postgres: PostgresServer, postgres_url: str
) -> None:
    """pg_terminate_backend of every connection of the leader's process (a partition as
    the database sees it): another replica leads; the old one commits no loop write."""
    files = {"fleet.yaml": fleet_doc(), "nodes/node-a.yaml": node_doc("node-a", labels=PORT)}
    repo = FleetRepo.create(tmp_path / "fleet", files)
    (tmp_path / "dist").mkdir()
    db = database_of(postgres_url)
    with replica_set(tmp_path, repo, postgres_url, 2) as rs:
        leader = rs.wait_leader()
        # a trigger of the test's own records who commits each loop write
        for statement in WRITERS:
            postgres.execute(statement, database=db)
        for table in ("rollouts", "desired", "audit", "applied_revisions"):
            postgres.execute(
                f"CREATE TRIGGER test_log_{table} AFTER INSERT OR UPDATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION test_log_write()",
                database=db,
            )
        old = str(postgres.execute("SELECT holder FROM fleetkeeper_leader", database=db)[0][0])
        proc = rs.procs[leader]
        assert proc is not None
        ports = client_ports(proc.pid, postgres.port)
        assert len(ports) >= 3  # the election, the wake-ups, the store's pool
        cut = postgres.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = ANY(%s)",
            [list(ports)],
            database=db,
        )
        assert all(ok for (ok,) in cut), cut
        started = time.monotonic()
        new = rs.wait_leader(timeout=4, other_than=leader)  # within leaderLeaseSeconds x 2
        print(f"cut off: another replica leads after {time.monotonic() - started:.2f}s")
        holder = postgres.execute("SELECT holder FROM fleetkeeper_leader", database=db)[0][0]
        assert holder != old
        assert rs.leads(leader) is False  # it reconnected, as a follower
        # work for the loop: only the new leader's writes are committed
        art = build_program(tmp_path / "dist", "hello", "1.0.0")
        release = hello_release("1.0.0", art, art.path.as_uri())
        release["targets"] = {"nodes": ["node-a"]}
        repo.change({"releases/hello/1.0.0.yaml": release}, "release hello 1.0.0")
        deadline = time.monotonic() + 30
        while True:
            writes = postgres.execute(
                "SELECT replica, tab FROM test_writes ORDER BY at", database=db
            )
            if any(tab == "desired" for _, tab in writes) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "desired" in {tab for _, tab in writes}, writes
        assert {r for r, _ in writes} == {holder}, (old, holder, writes)
        del new


def test_a_webhook_on_a_follower_makes_the_leader_fetch(tmp_path: Path, postgres_url: str) -> None:
    repo = FleetRepo.create(tmp_path / "fleet", DEFAULT_FILES)
    extra = {"pollIntervalSeconds": 600}  # only a webhook can make it fetch in time
    with replica_set(
        tmp_path, repo, postgres_url, 2, extra_config=extra, repo_url=repo.path.as_uri()
    ) as rs:
        leader = rs.wait_leader()
        follower = 1 - leader
        sha = repo.change({"nodes/node-d.yaml": node_doc("node-d")}, "add node-d")
        body = b'{"ref": "refs/heads/main"}'
        sig = {"x-fleetkeeper-signature": "sha256=" + sign(rs.webhook_secret, body)}
        r = httpx.post(f"{rs.urls[follower]}/hooks/generic", content=body, headers=sig)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            applied = [e["revision"] for e in rs.audit(follower) if e["kind"] == "applied"]
            if sha in applied:
                break
            time.sleep(0.2)
        assert sha in applied, f"the leader did not fetch {sha}\n{rs.tail()}"


def test_options_in_the_database_url_are_refused(tmp_path: Path, postgres_url: str) -> None:
    """libpq would ignore PGOPTIONS, and with it the setting the fencing triggers check."""
    repo = FleetRepo.create(tmp_path / "fleet", DEFAULT_FILES)
    url = postgres_url + "?options=-c%20statement_timeout%3D5000"
    config, _ = write_config(tmp_path / "config", str(repo.path), extra={"database": url})
    out = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stderr
    assert "drop options= from the URL" in out.stderr, out.stderr
