"""The service through a real PgBouncer in transaction pooling mode (``DB_POOLER=pgbouncer``).

Pooled traffic (read models, the event store) goes through PgBouncer with no server-side
prepared statements and no session state; LISTEN and the elections' session advisory locks go
to PostgreSQL directly (``DB_DIRECT_HOST``/``DB_DIRECT_PORT``). Without that, the first thing
that breaks is start-up itself: ``prepared statement "_pg3_0" already exists``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from domain.errors import InsufficientCreditsError
from domain.marketplace import OfferQuery
from domain.services.marketplace import RentSpec
from infrastructure.db.setup import ensure_database
from infrastructure.db.sql import PostgresDatabase
from infrastructure.jobs.election import HOLD_SWEEP_LOCK_KEY, MARKETPLACE_JOBS_LOCK_KEY, PgElection
from infrastructure.readmodels.rebuild import verify
from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import Container, bootstrap
from projections.ledger import ALL
from tests.conftest import IN_CI, FixedClock
from tests.support.http import JWT_SECRET, env_of, server_process
from tests.support.pg import Cluster
from tests.support.pgbouncer import Bouncer, running_pgbouncer

pytestmark = pytest.mark.postgres
USD = 1_000_000
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery"


@pytest.fixture(scope="module")
def bouncer(pg_cluster: Cluster) -> Iterator[Bouncer]:
    try:
        with running_pgbouncer(pg_cluster, pool_size=4) as running:
            yield running
    except (FileNotFoundError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"pgbouncer is required under CI: {exc}")
        pytest.skip(f"pgbouncer not available: {exc}")


@pytest.fixture
def bounced(bouncer: Bouncer, pg_cluster: Cluster) -> Settings:
    """Settings of a fresh database reached through PgBouncer."""
    name = pg_cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
    return load_settings(bouncer.env(name), env_file=None)


def test_settings_send_session_work_to_postgresql_itself(bounced: Settings) -> None:
    assert bounced.db.transaction_pooler
    assert f"port={bounced.db.port}" in bounced.db.postgres_conninfo
    assert f"port={bounced.db.direct_port}" in bounced.db.direct_conninfo
    assert bounced.db.port != bounced.db.direct_port
    plain = load_settings({"DB_TYPE": "postgres", "DB_PORT": "6000"}, env_file=None)
    assert not plain.db.transaction_pooler
    assert "port=6000" in plain.db.direct_conninfo  # the direct address defaults to DB_HOST/PORT


def test_start_up_creates_its_database_past_a_pooler_that_lists_only_it(
    pg_cluster: Cluster,
) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"  # not created yet: the first start creates it
    with running_pgbouncer(pg_cluster, only=name) as only:
        settings = load_settings(only.env(name), env_file=None)
        assert ensure_database(settings)
        c = bootstrap(settings)
        try:
            assert c.ledger.grant("u", USD, key="g").applied
        finally:
            c.close()


def _rotate(db: PostgresDatabase, clients: int = 6, rounds: int = 10) -> list[str]:
    """Run one statement over and over from several client connections held at once."""
    errors: list[str] = []
    with contextlib.ExitStack() as stack:
        conns = [stack.enter_context(db.pool.connection()) for _ in range(clients)]
        for n in range(rounds):
            for conn in conns:
                try:
                    conn.execute("SELECT %s::int + 1", (n,)).fetchone()
                except psycopg.Error as exc:
                    errors.append(type(exc).__name__)
    return errors


def test_server_prepared_statements_break_through_the_pooler_and_are_off(
    bounced: Settings,
) -> None:
    # The fixture really pools by transaction: psycopg's default (prepare after 5 runs) fails.
    prepared = PostgresDatabase(bounced.db.postgres_conninfo, max_size=6, server_prepare=True)
    try:
        broken = _rotate(prepared)
    finally:
        prepared.close()
    assert {"DuplicatePreparedStatement", "InvalidSqlStatementName"} & set(broken), broken
    unprepared = PostgresDatabase(bounced.db.postgres_conninfo, max_size=6, server_prepare=False)
    try:
        assert _rotate(unprepared) == []
    finally:
        unprepared.close()


def test_concurrent_money_commands_through_the_pooler(bounced: Settings) -> None:
    c = bootstrap(bounced)
    try:
        amount, wins = 10_000, 150
        c.ledger.grant("hot", wins * amount, key="funds")
        acked: list[str] = []
        refused: list[str] = []
        errors: list[str] = []

        def work(t: int) -> None:
            for i in range(25):
                key = f"c:{t}:{i}"
                try:
                    outcome = c.ledger.charge("hot", amount, key=key)
                    again = c.ledger.charge("hot", amount, key=key)  # a retry: same effect
                except InsufficientCreditsError:
                    refused.append(key)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    if not outcome.applied or again.applied:
                        errors.append(f"{key}: applied {outcome.applied}, then {again.applied}")
                    acked.append(key)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert len(acked) == wins
        assert len(refused) == 8 * 25 - wins
        charged = [e.data["key"] for e in c.ledger.history("hot") if e.name == "Charged"]
        assert sorted(charged) == sorted(acked)
        assert c.ledger.account("hot").balance == 0
        c.runner.catch_up()
        assert set(c.runner.lag().values()) == {0}
    finally:
        c.close()


def test_projection_runners_of_two_replicas_apply_each_event_once(bounced: Settings) -> None:
    # Runners are not elected (docs/adr/0021): each batch re-checks its locked position row.
    replicas = [bootstrap(bounced), bootstrap(bounced)]
    try:
        for n in range(40):
            replicas[n % 2].ledger.grant(f"u{n % 5}", USD, key=f"g{n}")
            replicas[n % 2].ledger.charge(f"u{n % 5}", 1000, key=f"c{n}")
        threads = [threading.Thread(target=c.runner.catch_up) for c in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for projection in ALL:
            (result,) = verify(replicas[0].db, replicas[0].events, [projection])
            assert result.ok, result
            assert result.position == replicas[0].events.head()
        balance = replicas[1].queries.balance("u0")
        assert balance is not None
        assert balance["balance"] == 8 * (USD - 1000)
    finally:
        for c in replicas:
            c.close()


def test_projections_wake_on_notify_from_another_replica(bounced: Settings) -> None:
    # The reader's watchdog poll is a minute away: only NOTIFY (LISTEN on the direct
    # connection) can wake it for the writer's save.
    slow_poll = dataclasses.replace(
        bounced, ledger=dataclasses.replace(bounced.ledger, projection_poll_interval=60.0)
    )
    reader = bootstrap(slow_poll, run_projections=True)
    writer = bootstrap(slow_poll)
    try:
        time.sleep(0.5)  # the listener connects
        head = writer.ledger.grant("far", 5 * USD, key="g").position
        assert head is not None
        deadline = time.monotonic() + 10
        while min(reader.runner.positions().values()) < head:
            assert time.monotonic() < deadline, reader.runner.positions()
            time.sleep(0.05)
    finally:
        writer.close()
        reader.close()


def test_an_election_through_the_pooler_never_hands_over(
    bounced: Settings, bouncer: Bouncer
) -> None:
    # Why elections connect directly: through PgBouncer the session lock is taken on a pooled
    # server connection, which the next client is lent too (the lock is re-entrant for that
    # session: two leaders at once), and which keeps the lock after its holder has gone.
    wrong = [PgElection(bounced.db.postgres_conninfo, 99) for _ in range(2)]
    try:
        assert wrong[0].leading()
        both = wrong[1].leading()
        wrong[0].close()
        handed_over = wrong[1].leading()
        assert both or not handed_over, "the pooler kept a session advisory lock exclusive"
    finally:
        for election in wrong:
            election.close()
        with psycopg.connect(bounced.db.direct_conninfo, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND objid = 99 AND pid <> pg_backend_pid()"
            )


def test_the_hold_sweep_election_hands_over_through_the_pooler(bounced: Settings) -> None:
    first, second = bootstrap(bounced), bootstrap(bounced)
    try:
        leader = first.election(HOLD_SWEEP_LOCK_KEY)
        assert leader.leading()
        assert not second.election(HOLD_SWEEP_LOCK_KEY).leading()
        leader.close()  # the holder goes away: its direct connection ends, so does the lock
        # the server drops the lock when its backend sees the disconnect: a moment later
        deadline = time.monotonic() + 5
        while not second.election(HOLD_SWEEP_LOCK_KEY).leading():
            assert time.monotonic() < deadline, "the lock was not handed over within 5 s"
            time.sleep(0.05)
    finally:
        first.close()
        second.close()


def _meter_captures(c: Container, user: str) -> list[str]:
    return [
        e.data["key"]
        for e in c.ledger.history(user)
        if e.name == "HoldCaptured" and str(e.data.get("key", "")).startswith("meter:")
    ]


def test_two_replicas_meter_each_interval_once_and_the_survivor_takes_over(
    bounced: Settings, clock: FixedClock
) -> None:
    tuned = dataclasses.replace(
        bounced,
        providers=dataclasses.replace(
            bounced.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
        marketplace=dataclasses.replace(bounced.marketplace, metering_interval=0.0),
    )
    replicas = [bootstrap(tuned, clock=clock), bootstrap(tuned, clock=clock)]
    a, b = replicas
    try:
        a.ledger.grant("renter", 50 * USD, key="g")
        offer = asyncio.run(a.marketplace.catalog(OfferQuery(gpu_model="4090"))).offers[0]
        gpu = asyncio.run(a.marketplace.rent("renter", "sandbox", offer.offer_id, RentSpec()))
        jobs = [a.jobs(), b.jobs()]

        def round_() -> list[bool]:
            for c in replicas:
                c.runner.catch_up()
            return [asyncio.run(j.run_once()) for j in jobs]

        assert round_() == [True, False]  # a leads: provisioning -> running
        assert a.marketplace.get(gpu.id).state == "running"
        for _ in range(3):
            clock.advance(seconds=60)
            assert round_() == [True, False]
        # a dies: its session ends, PostgreSQL frees the lock, and a runs no more rounds.
        with psycopg.connect(tuned.db.direct_conninfo, autocommit=True) as admin:
            held = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
            (holder,) = admin.execute(held, (MARKETPLACE_JOBS_LOCK_KEY,)).fetchall()
            admin.execute("SELECT pg_terminate_backend(%s)", holder)
            deadline = time.monotonic() + 10
            while admin.execute(held, (MARKETPLACE_JOBS_LOCK_KEY,)).fetchall():
                assert time.monotonic() < deadline, "the dead holder's lock stayed"
                time.sleep(0.05)
        for _ in range(2):
            clock.advance(seconds=60)
            b.runner.catch_up()
            assert asyncio.run(jobs[1].run_once())  # b took over at its next round
        running = b.marketplace.get(gpu.id)
        assert running.billed == running.price_per_hour * 300 // 3600
        captures = _meter_captures(b, "renter")
        assert len(captures) == len(set(captures)) == 5  # one per interval, none twice
    finally:
        for c in replicas:
            c.close()


def test_the_server_serves_a_renter_through_the_pooler(bounced: Settings, tmp_path: Path) -> None:
    """register -> grant (admin API) -> rent -> proxy -> credits, by a real server process."""
    env = {
        **env_of(bounced),
        "DB_POOLER": "pgbouncer",
        "DB_DIRECT_HOST": bounced.db.direct_host,
        "DB_DIRECT_PORT": str(bounced.db.direct_port),
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": JWT_SECRET,
        "RATE_LIMIT_PER_MINUTE": "100000",
        "SANDBOX_PROVISIONING_DELAY": "0",
        "INSTANCE_POLL_SECONDS": "0.2",
        "PROXY_REQUEST_PRICE": "0.010000",
        "GRPC_ENABLED": "false",
    }
    with server_process(env, tmp_path / "server.log") as base, httpx.Client(timeout=30) as http:

        def login(email: str) -> dict[str, str]:
            body = {"email": email, "password": PASSWORD}
            made = http.post(f"{base}/api/v1/auth/register", json={**body, "name": "N"})
            assert made.status_code == 201, made.text
            got = http.post(f"{base}/api/v1/auth/login", json=body)
            assert got.status_code == 200, got.text
            return {"Authorization": f"Bearer {got.json()['tokens']['access_token']}"}

        ops = login("ops@example.com")
        ann = login("ann@example.com")
        c = bootstrap(bounced)
        try:
            c.users.set_admin("ops@example.com")
            ann_id = c.users.by_email("ann@example.com").id
        finally:
            c.close()
        for _ in range(2):  # a retried grant is one grant
            granted = http.post(
                f"{base}/api/v1/admin/users/{ann_id}/credits",
                json={"amount": "20.000000"},
                headers={**ops, "Idempotency-Key": "welcome"},
            )
            assert granted.status_code in {200, 201}, granted.text
        offers = http.get(f"{base}/api/v1/gpu/instances?provider=sandbox", headers=ann).json()
        offer = offers["offers"][0]["id"]
        rented = http.post(f"{base}/api/v1/gpu/instances/sandbox/{offer}", json={}, headers=ann)
        assert rented.status_code == 201, rented.text
        instance = rented.json()["instance"]
        deadline = time.monotonic() + 30
        while instance["state"] != "running":  # the elected marketplace job starts it
            assert time.monotonic() < deadline, instance
            time.sleep(0.1)
            url = f"{base}/api/v1/gpu/instances/sandbox/{instance['id']}"
            instance = http.get(url, headers=ann).json()["instance"]
        proxied = http.get(f"{base}/api/v1/gpu/proxy/{instance['id']}/health", headers=ann)
        assert proxied.status_code == 200, proxied.text
        deadline = time.monotonic() + 15
        while True:  # the read model catches up (NOTIFY on the direct connection)
            credits = http.get(f"{base}/api/v1/billing/credits", headers=ann)
            assert credits.status_code == 200, credits.text
            body = credits.json()
            if Decimal(body["credits_held"]) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert body["credits_total"] == "20.000000", body  # the retried grant counted once
        assert Decimal(body["credits_held"]) > 0, body  # the rental's hold
        assert Decimal(body["credits_available"]) < 20, body


def _replica(env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.metering_replica"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "#ready"
    return proc


def _lock_holder(admin: psycopg.Connection[Any]) -> int | None:
    row = admin.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted",
        (MARKETPLACE_JOBS_LOCK_KEY,),
    ).fetchone()
    return None if row is None else int(row[0])


def _wait(check: Callable[[], bool], seconds: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, what
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.slow
def test_metering_processes_bill_once_and_the_survivor_takes_over_a_kill(
    bounced: Settings, bouncer: Bouncer, pg_cluster: Cluster
) -> None:
    interval = 0.5
    env = {
        **bouncer.env(bounced.db.name),
        "METERING_INTERVAL_SECONDS": str(interval),
        "INSTANCE_POLL_SECONDS": "0.1",
        "SANDBOX_PROVISIONING_DELAY": "0",
    }
    c = bootstrap(load_settings(env, env_file=None))
    replicas: list[subprocess.Popen[str]] = []
    try:
        c.ledger.grant("renter", 50 * USD, key="g")
        offer = asyncio.run(c.marketplace.catalog(OfferQuery(gpu_model="4090"))).offers[0]
        gpu = asyncio.run(c.marketplace.rent("renter", "sandbox", offer.offer_id, RentSpec()))
        c.runner.catch_up()
        jobs = c.jobs()
        assert asyncio.run(jobs.run_once())  # provisioning -> running, here (sandbox state)
        jobs.election.close()
        with psycopg.connect(bounced.db.direct_conninfo, autocommit=True) as admin:
            replicas.append(_replica(env))
            _wait(lambda: _lock_holder(admin) is not None, 30, "the first replica never led")
            first = _lock_holder(admin)
            replicas.append(_replica(env))
            start = len(_meter_captures(c, "renter"))
            time.sleep(3)
            assert _lock_holder(admin) == first  # the second waits
            before = len(_meter_captures(c, "renter"))
            # One replica meters every interval; two would meter about twice as often.
            assert 0 < before - start <= 3 / interval + 2
            replicas[0].kill()  # SIGKILL: its sessions end, the lock with them
            replicas[0].wait(timeout=10)
            took = _wait(lambda: _lock_holder(admin) not in {None, first}, 10, "nobody took over")
            assert took < 10
            _wait(lambda: len(_meter_captures(c, "renter")) >= before + 2, 10, "no metering")
        replicas[1].terminate()
        replicas[1].wait(timeout=30)
        history = c.ledger.history("renter")
        captures = [e.data for e in history if e.name == "HoldCaptured"]
        keys = [d["key"] for d in captures]
        assert len(keys) == len(set(keys))  # no interval billed twice
        billed = c.marketplace.get(gpu.id).billed
        assert sum(d["amount"] for d in captures) == billed  # and none skipped
    finally:
        for proc in replicas:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        c.close()


def test_payment_jobs_run_in_one_replica_and_move_when_it_goes(bounced: Settings) -> None:
    replicas = [bootstrap(bounced), bootstrap(bounced)]
    runs: list[int] = []

    def step_of(n: int) -> Callable[[], Awaitable[int]]:
        async def step() -> int:
            runs.append(n)
            return 0

        return step

    async def scenario() -> tuple[set[int], set[int]]:
        jobs = [c.payment_jobs() for c in replicas]
        tasks = [asyncio.create_task(j._every(0.05, step_of(n))) for n, j in enumerate(jobs)]
        await asyncio.sleep(1.0)
        first = set(runs)
        (leader,) = first  # exactly one replica ran the job
        tasks[leader].cancel()  # the leader goes away: its session (and lock) with it
        await asyncio.gather(tasks[leader], return_exceptions=True)
        jobs[leader].election.close()
        runs.clear()
        await asyncio.sleep(1.0)
        after = set(runs)
        tasks[1 - leader].cancel()
        await asyncio.gather(tasks[1 - leader], return_exceptions=True)
        return first, after

    try:
        first, after = asyncio.run(scenario())
        assert len(first) == 1
        assert after == {1 - next(iter(first))}
    finally:
        for c in replicas:
            c.close()
