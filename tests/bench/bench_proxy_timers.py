"""What a proxied request's timers cost, before and after ADR 0035, alone, side by side.

One event loop (uvloop, as the server runs), ``time.thread_time`` per request, rounds
interleaved, medians:

- ``old_timers``: a header-deadline timer and a keep-alive timer armed and cancelled (what
  ``BoundedHttpProtocol`` and uvicorn did per request); ``new_timers``: the phase start
  times recorded and the connection's one timer left alone (what they do now while it is
  pending);
- ``old_timeout``: ``asyncio.timeout_at`` around an await (``Forwarder.send`` before);
  ``new_timeout``: ``Connection.watch``'s bookkeeping around the same await.

    .venv/bin/python -m tests.bench.bench_proxy_timers [--n 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import uvloop


class _Conn:
    timer: object | None = None
    at = 0.0
    since: float | None = None
    deadline: float | None = None


async def _measure(n: int, rounds: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    ready.set_result(None)
    conn = _Conn()
    conn.timer, conn.at = object(), loop.time() + 1  # pending sooner, as on a busy connection

    def old_timers() -> None:
        loop.call_later(10, print).cancel()
        loop.call_later(5, print).cancel()

    def new_timers() -> None:
        for timeout in (10.0, 5.0):
            since = conn.since = loop.time()
            if conn.timer is None or conn.at > since + timeout:
                raise AssertionError("the pending timer is sooner")
            conn.since = None

    async def old_timeout() -> None:
        async with asyncio.timeout_at(loop.time() + 30):
            await ready

    async def new_timeout() -> None:
        conn.deadline = loop.time() + 30
        if conn.timer is None or conn.at > conn.deadline:
            raise AssertionError("the pending timer is sooner")
        try:
            await ready
        finally:
            conn.deadline = None

    plain: dict[str, Callable[[], None]] = {"old_timers": old_timers, "new_timers": new_timers}
    awaited: dict[str, Callable[[], Awaitable[None]]] = {
        "old_timeout": old_timeout,
        "new_timeout": new_timeout,
    }
    results: dict[str, list[float]] = {name: [] for name in (*plain, *awaited)}
    for _ in range(rounds):
        for name, step in plain.items():
            cpu = time.thread_time()
            for _ in range(n):
                step()
            results[name].append((time.thread_time() - cpu) / n * 1e6)
        for name, coro in awaited.items():
            cpu = time.thread_time()
            for _ in range(n):
                await coro()
            results[name].append((time.thread_time() - cpu) / n * 1e6)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="requests per step a round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    results = uvloop.run(_measure(args.n, args.rounds))
    for name, values in results.items():
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"{name}: {statistics.median(values):.2f} µs CPU per request (rounds {rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
