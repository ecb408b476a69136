"""The proxy's Redis instance signal read on the event loop (``aread``), against a real Redis:
the same marks as ``read``, one MGET for concurrent lookups, each answer from a read that
started after it was asked, and "changed" (never equal) while Redis is down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from infrastructure.proxy.instance_signal import RedisInstanceSignal
from tests.support.pg import free_port


class CountingRedis:
    """The async twin, counting MGET calls and letting the test bump between them."""

    def __init__(self, inner: Any, on_mget: Any = None) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []
        self.on_mget = on_mget

    async def mget(self, keys: list[str]) -> Any:
        self.calls.append(keys)
        values = await self.inner.mget(keys)
        if self.on_mget is not None:
            await self.on_mget()
        return values

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_aread_matches_read_and_sees_a_bump_at_once(redis_url: str) -> None:
    signal = RedisInstanceSignal(redis.Redis.from_url(redis_url))
    owner = f"user-{time.monotonic_ns()}"

    async def scenario() -> None:
        assert await signal.aread(owner) == signal.read(owner) == 0
        signal.bump(owner)
        assert await signal.aread(owner) == signal.read(owner) == 1
        await signal.aclose()

    asyncio.run(scenario())


def test_concurrent_areads_share_one_mget_and_never_an_older_one(redis_url: str) -> None:
    signal = RedisInstanceSignal(redis.Redis.from_url(redis_url))
    owners = [f"user-{time.monotonic_ns()}-{i}" for i in range(5)]

    async def scenario() -> None:
        await signal.aread(owners[0])  # creates this loop's batches
        batches = signal._batches[asyncio.get_running_loop()]
        assert batches is not None
        late: list[asyncio.Future[object]] = []

        async def bump_then_ask() -> None:  # while the first MGET is in flight
            if not late:
                signal.bump(owners[0])
                late.append(asyncio.ensure_future(signal.aread(owners[0])))
                await asyncio.sleep(0)  # the late lookup is asked now, before this MGET ends

        counting = CountingRedis(batches.client, bump_then_ask)
        batches.client = counting
        first = await asyncio.gather(*(signal.aread(o) for o in owners * 3))
        assert first == [0] * 15
        assert await late[0] == 1  # asked after the bump: not served by the MGET running then
        # 15 lookups: one MGET for all five owners, then one for the read asked meanwhile
        assert len(counting.calls) == 2
        assert sorted(counting.calls[0]) == sorted(RedisInstanceSignal.PREFIX + o for o in owners)
        await signal.aclose()

    asyncio.run(scenario())


def test_aread_with_redis_down_reads_as_changed() -> None:
    dead = RedisInstanceSignal(
        redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2)
    )

    async def scenario() -> None:
        a, b = await asyncio.gather(dead.aread("u"), dead.aread("u"))
        c = await dead.aread("u")
        assert a != c
        assert b != c
        await dead.aclose()

    asyncio.run(scenario())
