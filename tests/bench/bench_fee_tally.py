"""What the durable proxy fee tally (docs/adr/0029) costs a proxied request.

Three ``ProxyRuntime`` objects on one container (SQLite, a real redis-server, a sandbox
instance served from a thread of this process), identical but for ``fee_tally``: none (ADR
0009's in-memory spend only, ``no_tally``), a ``RedisFeeTally`` writing through
``redis.asyncio`` (``lean=False``, ``redis_tally``) and one writing through its ``RespWriter``
(the default, ``lean_tally``); each fee's ``INCRBY`` started at the spend, awaited before
``forward`` returns. Interleaved in rounds, side by side:

- sequential ``forward`` + reading the body: median wall µs per request and the event-loop
  thread's CPU µs per request (``time.thread_time``);
- 16 concurrent callers: requests per second;
- the bare write (``bare_incrby``): sequential ``INCRBY`` awaits on the event loop through
  ``RespWriter`` and through ``redis.asyncio``, CPU and wall µs per write.

Run: ``.venv/bin/python -m tests.bench.bench_fee_tally [--rounds 5] [--n 200]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from domain.marketplace import OfferQuery
from domain.services.marketplace import RentSpec
from infrastructure.proxy.fee_tally import RedisFeeTally
from infrastructure.proxy.instance_signal import LocalInstanceSignal, async_twin
from infrastructure.proxy.resp_writer import RespWriter
from infrastructure.proxy.runtime import ProxyRuntime
from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from tests.support.redis_server import running_redis

PRICE = 100  # micro-USD per request


def runtime(c: Container, tally: RedisFeeTally | None) -> ProxyRuntime:
    return ProxyRuntime(
        c.db,
        c.ledger,
        default_strategy="round_robin",
        price=PRICE,
        lease_amount=10_000_000,
        allow_private=True,
        connect_timeout=5,
        default_timeout=30,
        flush_interval=3600,
        clock=c.ledger.clock,
        signal=LocalInstanceSignal(),
        fee_tally=tally,
    )


async def measure(c: Container, user_id: str, instance_id: str, args: Any) -> dict[str, Any]:
    assert c.redis is not None
    sides = {
        "no_tally": runtime(c, None),
        "redis_tally": runtime(c, RedisFeeTally(c.redis, lean=False)),
        "lean_tally": runtime(c, RedisFeeTally(c.redis)),
    }

    async def one(rt: ProxyRuntime) -> None:
        sent = await rt.forward(
            user_id,
            method="GET",
            headers=[("host", "127.0.0.1")],
            body=None,
            timeout=None,
            instance_id=instance_id,
            path="health",
        )
        async for _ in sent.chunks():
            pass

    for rt in sides.values():
        for _ in range(100):  # warm up: lease, pool, connections
            await one(rt)
    wall: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    rps: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, rt in sides.items():
            cpu0 = time.thread_time()
            for _ in range(args.n):
                t0 = time.perf_counter()
                await one(rt)
                wall[name].append((time.perf_counter() - t0) * 1e6)
            cpu[name].append((time.thread_time() - cpu0) / args.n * 1e6)
            t0 = time.perf_counter()
            for _ in range(args.n // 16):
                await asyncio.gather(*(one(rt) for _ in range(16)))
            rps[name].append((args.n // 16) * 16 / (time.perf_counter() - t0))
    for rt in sides.values():
        await rt.aclose()
    return {
        name: {
            "p50_wall_us": round(statistics.median(wall[name]), 1),
            "p90_wall_us": round(statistics.quantiles(wall[name], n=10)[-1], 1),
            "cpu_us_per_request": round(statistics.median(cpu[name]), 1),
            "rps_16_concurrent": round(statistics.median(rps[name])),
        }
        for name in sides
    }


async def bare(client: Any, args: Any) -> dict[str, Any]:
    """One ``INCRBY`` awaited at a time, without the proxy around it."""
    writer, aclient = RespWriter.for_client(client), async_twin(client)
    assert writer is not None
    assert aclient is not None
    sides: dict[str, Callable[[], Awaitable[Any]]] = {
        "resp_writer": lambda: writer.incrby({"bench:bare": 1}),
        "redis_asyncio": lambda: aclient.incrby("bench:bare", 1),
    }
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    wall: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, write in sides.items():
            cpu0, t0 = time.thread_time(), time.perf_counter()
            for _ in range(args.n):
                await write()
            cpu[name].append((time.thread_time() - cpu0) / args.n * 1e6)
            wall[name].append((time.perf_counter() - t0) / args.n * 1e6)
    writer.close()
    await aclient.aclose()
    return {
        name: {
            "cpu_us_per_write": round(statistics.median(cpu[name][1:]), 1),
            "wall_us_per_write": round(statistics.median(wall[name][1:]), 1),
        }
        for name in sides
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench-results/fee_tally.json"))
    args = parser.parse_args()
    with running_redis() as url, tempfile.TemporaryDirectory() as data:
        settings = load_settings(
            {
                "DATA_DIR": data,
                "REDIS_URL": url,
                "SANDBOX_PROVIDER_ENABLED": "true",
                "SANDBOX_PROVISIONING_DELAY": "0",
                "JWT_SECRET": "bench-secret-0123456789-abcdefghijklmnop",
            },
            env_file=None,
        )
        c = bootstrap(settings)
        loop = asyncio.new_event_loop()
        try:
            user = c.users.create("bench@example.com", "correct-horse-battery", "Bench")
            c.ledger.grant(user.id, 1_000_000_000, key="bench")
            offers = loop.run_until_complete(c.marketplace.catalog(OfferQuery())).offers
            offer = min(offers, key=lambda o: o.price_per_hour).offer_id
            gpu = loop.run_until_complete(c.marketplace.rent(user.id, "sandbox", offer, RentSpec()))
            c.runner.catch_up()
            result = loop.run_until_complete(measure(c, user.id, str(gpu.id), args))
            result["bare_incrby"] = loop.run_until_complete(bare(c.redis, args))
            loop.run_until_complete(c.aclose_providers())
        finally:
            loop.close()
            c.close()
    result["method"] = (
        f"{args.rounds} rounds x {args.n} sequential requests per side (interleaved) + "
        f"{args.n // 16} x 16 concurrent; sandbox upstream in a thread of the same process; "
        "loopback redis-server (no AOF)"
    )
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
