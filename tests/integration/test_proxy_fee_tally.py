"""The durable proxy fee tally (Redis) and lease recovery, on PostgreSQL and a real Redis.

Each fee spent from a lease is added to the lease's tally in Redis; a refund takes it back;
recovery captures a dead owner's tally exactly once, and a live owner never captures again
what recovery took (docs/adr/0029-durable-proxy-fee-tally.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from domain.marketplace import OfferQuery
from domain.services.marketplace import RentSpec
from domain.services.proxy_leases import ProxyLeases
from infrastructure.proxy.fee_tally import ALIVE, LEASES, TALLY, USABLE, RedisFeeTally
from infrastructure.proxy.instance_signal import LocalInstanceSignal
from infrastructure.proxy.lease_recovery import LeaseRecovery
from infrastructure.proxy.runtime import ProxyRuntime
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock

USD = 1_000_000
PRICE = 1_000
USER = "tally-user"
NOW = timedelta(0)  # recovery takes a dead owner's leases at its second look


@pytest.fixture
def shared(
    pg_settings: Settings, redis_url: str, redis_client: Any, clock: FixedClock
) -> Iterator[Container]:
    c = bootstrap(
        dataclasses.replace(
            pg_settings,
            redis=dataclasses.replace(pg_settings.redis, url=redis_url),
            providers=dataclasses.replace(pg_settings.providers, sandbox_provisioning_delay=0.0),
        ),
        clock=clock,
    )
    try:
        c.ledger.grant(USER, USD, key="g")
        yield c
    finally:
        c.close()


def leases_of(c: Container, clock: FixedClock, process_id: str = "p1") -> ProxyLeases:
    assert c.redis is not None
    return ProxyLeases(
        c.ledger,
        price=PRICE,
        lease_amount=50_000,
        process_id=process_id,
        clock=clock,
        tally=RedisFeeTally(c.redis),
    )


def tally_of(leases: ProxyLeases) -> RedisFeeTally:
    assert isinstance(leases.tally, RedisFeeTally)
    return leases.tally


def captured(c: Container) -> list[tuple[str, int]]:
    return [
        (e.data["key"], e.data["amount"])
        for e in c.ledger.history(USER)
        if e.name == "HoldCaptured" and e.data["hold_id"].startswith("lease:")
    ]


async def spend(leases: ProxyLeases, n: int) -> None:
    for _ in range(n):
        await leases.spend(USER)
        stored = leases.tally_write(USER)
        if stored is not None:
            assert await stored


def test_each_fee_and_refund_reaches_the_tally(shared: Container, clock: FixedClock) -> None:
    redis: Any = shared.redis
    leases = leases_of(shared, clock)

    async def body() -> str:
        await spend(leases, 3)
        hold_id = leases.snapshot()[USER].hold_id
        assert int(redis.get(TALLY + hold_id)) == 3 * PRICE
        assert redis.hexists(LEASES, hold_id)
        assert redis.exists(ALIVE + "p1")
        assert leases.refund(USER)  # nothing delivered: the fee comes back, in Redis too
        stored = leases.tally_write(USER)
        assert stored is not None
        assert await stored
        assert int(redis.get(TALLY + hold_id)) == 2 * PRICE
        await leases.close()
        await tally_of(leases).aclose()
        return hold_id

    hold_id = asyncio.run(body())
    assert sum(a for _, a in captured(shared)) == 2 * PRICE
    assert not redis.exists(TALLY + hold_id)  # released by its owner: forgotten
    assert not redis.hexists(LEASES, hold_id)


def test_dead_owners_tally_is_captured_once(shared: Container, clock: FixedClock) -> None:
    redis: Any = shared.redis
    leases = leases_of(shared, clock, "dead")
    recovery = LeaseRecovery(shared.ledger, RedisFeeTally(redis), confirm=NOW)

    async def body() -> str:
        await spend(leases, 5)
        await leases.settle()  # 5 captured by the owner
        await spend(leases, 4)  # ... and these 4 only tallied when it "dies"
        await tally_of(leases).aclose()
        return leases.snapshot()[USER].hold_id

    hold_id = asyncio.run(body())
    assert recovery.recover_once() == 0  # the owner is alive: its lease is left alone
    redis.delete(ALIVE + "dead")  # what the key's expiry does after a SIGKILL
    assert recovery.recover_once() == 0  # first seen gone: it may only have missed Redis
    assert recovery.recover_once() == 4 * PRICE
    assert recovery.recover_once() == 0
    assert captured(shared) == [
        (f"{hold_id}:capture:from:0", 5 * PRICE),
        (f"{hold_id}:capture:from:5000", 4 * PRICE),
    ]
    view = shared.ledger.account(USER)
    assert (view.total_charged, view.held) == (9 * PRICE, 0)
    assert not redis.hexists(LEASES, hold_id)


def test_owner_never_captures_again_what_recovery_took(
    shared: Container, clock: FixedClock
) -> None:
    """An owner alive but stuck past its lease's use-by time (its usable mark expired):
    recovery captures and releases it; the owner's own capture from the same position is then
    refused, never applied twice."""
    redis: Any = shared.redis
    leases = leases_of(shared, clock, "stuck")
    recovery = LeaseRecovery(shared.ledger, RedisFeeTally(redis), confirm=NOW)

    async def body() -> None:
        await spend(leases, 6)
        lease = leases.snapshot()[USER]
        assert await asyncio.to_thread(recovery.recover_once) == 0  # alive and usable
        redis.set(ALIVE + "stuck", 1)  # alive, but it has not settled in time:
        redis.delete(USABLE + lease.hold_id)  # what the mark's expiry does
        assert await asyncio.to_thread(recovery.recover_once) == 6 * PRICE
        assert leases.refund(USER)  # too late to give back: recovery captured it
        await leases.close()  # 5 from position 0: refused (recovery took 6 from there)
        assert leases.snapshot() == {}
        await tally_of(leases).aclose()

    asyncio.run(body())
    assert sum(a for _, a in captured(shared)) == 6 * PRICE
    view = shared.ledger.account(USER)
    assert (view.total_charged, view.held) == (6 * PRICE, 0)


def test_expired_unsettled_lease_is_forgotten(shared: Container, clock: FixedClock) -> None:
    """Recovery that comes too late (no sweep for the whole lease): nothing can be captured;
    the entry is dropped and the hold has expired, as without a tally."""
    redis: Any = shared.redis
    leases = leases_of(shared, clock, "late")
    recovery = LeaseRecovery(shared.ledger, RedisFeeTally(redis), confirm=NOW)

    async def body() -> str:
        await spend(leases, 2)
        await tally_of(leases).aclose()
        return leases.snapshot()[USER].hold_id

    hold_id = asyncio.run(body())
    redis.delete(ALIVE + "late")
    clock.advance(minutes=11)
    assert recovery.recover_once() == 0  # first seen gone
    assert recovery.recover_once() == 0
    assert not redis.hexists(LEASES, hold_id)
    assert captured(shared) == []
    assert shared.ledger.account(USER).held == 0


def test_unreachable_redis_answers_false_and_the_fee_stays_in_memory(
    shared: Container, clock: FixedClock
) -> None:
    """Redis down (restarting): the write answers False quickly, never raises; the fee is
    captured by its live owner as without a tally."""
    import redis

    from tests.support.pg import free_port

    down = RedisFeeTally(redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    leases = ProxyLeases(
        shared.ledger,
        price=PRICE,
        lease_amount=50_000,
        process_id="p-down",
        clock=clock,
        tally=down,
    )

    async def body() -> None:
        await leases.spend(USER)
        stored = leases.tally_write(USER)
        assert stored is not None
        assert await stored is False
        assert down.failures == 1
        await leases.close()
        await down.aclose()

    asyncio.run(body())
    assert sum(a for _, a in captured(shared)) == PRICE


def test_forward_answers_only_once_the_fee_is_in_redis(
    shared: Container, clock: FixedClock, redis_client: Any
) -> None:
    """``ProxyRuntime.forward`` hands the answer back only after the fee's ``INCRBY`` is
    stored: with Redis refusing writes for 0.3 s (``CLIENT PAUSE … WRITE``; reads go on), the
    forward waits, and the tally already holds the fee when it returns."""
    shared.ledger.grant(USER, 100 * USD, key="g-rent")
    offer = min(
        asyncio.run(shared.marketplace.catalog(OfferQuery())).offers,
        key=lambda o: o.price_per_hour,
    ).offer_id
    gpu = asyncio.run(shared.marketplace.rent(USER, "sandbox", offer, RentSpec()))
    shared.runner.catch_up()
    assert shared.redis is not None
    runtime = _runtime(shared, RedisFeeTally(shared.redis))

    async def forward() -> float:
        started = time.monotonic()
        sent = await runtime.forward(
            USER,
            method="GET",
            headers=[("host", "127.0.0.1")],
            body=None,
            timeout=None,
            instance_id=str(gpu.id),
            path="health",
        )
        took = time.monotonic() - started
        async for _ in sent.chunks():
            pass
        assert sent.response.status == 200
        return took

    async def body() -> None:
        await forward()  # places and registers the lease
        hold_id = runtime.leases.snapshot()[USER].hold_id
        assert int(redis_client.get(TALLY + hold_id)) == PRICE
        redis_client.execute_command("CLIENT", "PAUSE", 300, "WRITE")
        took = await forward()
        assert int(redis_client.get(TALLY + hold_id)) == 2 * PRICE  # stored before the answer
        assert took >= 0.25
        await runtime.aclose()

    try:
        asyncio.run(body())
    finally:
        asyncio.run(shared.aclose_providers())


def _runtime(c: Container, tally: RedisFeeTally) -> ProxyRuntime:
    """A runtime on the container."""
    return ProxyRuntime(
        c.db,
        c.ledger,
        default_strategy="round_robin",
        price=PRICE,
        lease_amount=50_000,
        allow_private=True,
        connect_timeout=5,
        default_timeout=30,
        flush_interval=3600,
        clock=c.ledger.clock,
        signal=LocalInstanceSignal(),
        fee_tally=tally,
    )
