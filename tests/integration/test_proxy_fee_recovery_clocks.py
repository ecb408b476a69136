"""Lease recovery decides on Redis's clock only, and a Redis outage takes no live lease.

Review of ADR 0029: recovery judged an owner "stuck" by comparing the sweeper's clock with
``usable_until``, a time the owner computed on its own clock. ``BoundedClock`` only bounds a
clock that runs *ahead* of PostgreSQL's; with the owner's clock 30 s behind the sweeper's,
recovery took a healthy owner's lease while it still spent from it, and the fees it answered
afterwards were never captured. Now the owner's "usable" mark expires on Redis (a duration).

A Redis outage longer than the liveness mark's 15 s, or a restart without data, used to let a
sweep take a live owner's lease before its next beat, and the owner never registered its
leases again. Now a missing mark must stay missing (no beat) for ``CONFIRM`` of Redis time,
and each beat registers again what the tally lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from domain.services.proxy_leases import ProxyLeases
from infrastructure.proxy.fee_tally import ALIVE, LEASES, RedisFeeTally
from infrastructure.proxy.lease_recovery import GRACE, LeaseRecovery
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock
from tests.support.pg import free_port
from tests.support.redis_server import running_redis

USD = 1_000_000
PRICE = 1_000
USER = "skewed-owner"
BEHIND = timedelta(seconds=30)  # the owner's clock, behind the sweeper's (and the database's)


@pytest.fixture
def shared(
    pg_settings: Settings, redis_url: str, redis_client: Any, clock: FixedClock
) -> Iterator[Container]:
    c = bootstrap(
        dataclasses.replace(
            pg_settings, redis=dataclasses.replace(pg_settings.redis, url=redis_url)
        ),
        clock=clock,
    )
    try:
        c.ledger.grant(USER, USD, key="g")
        yield c
    finally:
        c.close()


def lease_captures(c: Container) -> int:
    return sum(
        int(e.data["amount"])
        for e in c.ledger.history(USER)
        if e.name == "HoldCaptured" and str(e.data["hold_id"]).startswith("lease:")
    )


def test_a_live_owner_whose_clock_is_behind_loses_no_answered_fee(
    shared: Container, clock: FixedClock
) -> None:
    redis: Any = shared.redis

    def owner_clock() -> datetime:
        return clock() - BEHIND

    leases = ProxyLeases(
        shared.ledger,
        price=PRICE,
        lease_amount=50_000,
        process_id="skewed",
        clock=owner_clock,
        tally=RedisFeeTally(redis),
    )
    recovery = LeaseRecovery(shared.ledger, RedisFeeTally(redis))
    answered = 0

    async def spend(n: int) -> None:
        nonlocal answered
        for _ in range(n):
            await leases.spend(USER)
            stored = leases.tally_write(USER)
            assert stored is not None
            assert await stored
            answered += 1

    async def body() -> None:
        await spend(3)
        lease = leases.snapshot()[USER]
        usable_until = lease.expires_at - leases.margin
        clock.now = usable_until + GRACE + timedelta(seconds=1)  # the sweeper's time
        assert owner_clock() < usable_until  # the owner may still spend from its lease
        assert redis.exists(ALIVE + "skewed")  # and it is alive
        await asyncio.to_thread(recovery.recover_once)
        await spend(2)  # answered, from the same lease
        await leases.close()
        assert isinstance(leases.tally, RedisFeeTally)
        await leases.tally.aclose()

    asyncio.run(body())
    assert answered == 5
    assert lease_captures(shared) == answered * PRICE  # was 3000: 2 answered fees lost


def owner(c: Container, clock: FixedClock, process_id: str, redis: Any) -> ProxyLeases:
    return ProxyLeases(
        c.ledger,
        price=PRICE,
        lease_amount=50_000,
        process_id=process_id,
        clock=clock,
        tally=RedisFeeTally(redis),
    )


async def answer(leases: ProxyLeases, n: int) -> None:
    for _ in range(n):
        await leases.spend(USER)
        stored = leases.tally_write(USER)
        assert stored is not None
        assert await stored


def test_a_live_owner_whose_mark_expired_in_an_outage_keeps_its_lease(
    shared: Container, clock: FixedClock
) -> None:
    """Its mark expired while Redis was unreachable; a sweep comes before its next beat."""
    redis: Any = shared.redis
    leases = owner(shared, clock, "outage", redis)
    recovery = LeaseRecovery(shared.ledger, RedisFeeTally(redis), confirm=timedelta(0))

    async def body() -> None:
        assert isinstance(leases.tally, RedisFeeTally)
        await answer(leases, 3)
        redis.delete(ALIVE + "outage")  # expired during the outage
        assert await asyncio.to_thread(recovery.recover_once) == 0
        await leases.beat(leases.tally)  # Redis is back: the owner beats
        redis.delete(ALIVE + "outage")  # and the mark expires once more (another outage)
        assert await asyncio.to_thread(recovery.recover_once) == 0  # seen again: start over
        await answer(leases, 2)
        await leases.close()
        await leases.tally.aclose()

    asyncio.run(body())
    assert lease_captures(shared) == 5 * PRICE
    assert shared.ledger.account(USER).held == 0


def test_leases_lost_in_a_redis_restart_are_registered_again(
    pg_settings: Settings, clock: FixedClock
) -> None:
    """Redis restarts without its data; the owner's next beat registers its lease again, so
    when the owner dies later recovery still captures what it answered since."""
    port = free_port()
    first = contextlib.ExitStack()
    url = first.enter_context(running_redis(port))
    c = bootstrap(
        dataclasses.replace(pg_settings, redis=dataclasses.replace(pg_settings.redis, url=url)),
        clock=clock,
    )
    try:
        c.ledger.grant(USER, USD, key="g")
        redis: Any = c.redis
        leases = owner(c, clock, "restarted", redis)
        loop = asyncio.new_event_loop()
        try:
            assert isinstance(leases.tally, RedisFeeTally)
            loop.run_until_complete(answer(leases, 3))
            loop.run_until_complete(leases.settle())  # 3 captured by the owner
            hold_id = leases.snapshot()[USER].hold_id
            first.close()  # Redis stops; its data is gone
            with running_redis(port):  # the same address, no data
                assert not redis.hexists(LEASES, hold_id)
                for _ in range(20):  # its clients reconnect on a later command
                    with contextlib.suppress(Exception):
                        loop.run_until_complete(leases.beat(leases.tally))
                    if redis.hexists(LEASES, hold_id):
                        break
                assert redis.hexists(LEASES, hold_id)  # registered again
                loop.run_until_complete(answer(leases, 2))
                loop.run_until_complete(leases.tally.aclose())  # the owner dies (no close)
                redis.delete(ALIVE + "restarted")
                recovery = LeaseRecovery(c.ledger, RedisFeeTally(redis), confirm=timedelta(0))
                assert recovery.recover_once() == 0  # first seen gone
                assert recovery.recover_once() == 2 * PRICE
        finally:
            loop.close()
        assert lease_captures(c) == 5 * PRICE
        assert c.ledger.account(USER).held == 0
    finally:
        first.close()
        c.close()
