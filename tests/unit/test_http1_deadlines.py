"""The upstream client's time limit on one timer per connection (``Connection.watch``)."""

from __future__ import annotations

import asyncio
import ssl
import time

import pytest

from infrastructure.proxy.http1 import Http1Pool

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def _upstream() -> tuple[asyncio.Server, int]:
    """Answers ``GET /fast`` at once and ``GET /slow`` after 2 s, keep-alive."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                if b"/slow" in line:
                    await asyncio.sleep(2)
                writer.write(ANSWER)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def _head(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: up\r\n\r\n".encode()


def _pool() -> Http1Pool:
    return Http1Pool(
        connect_timeout=5,
        keepalive_timeout=30,
        max_idle_per_host=4,
        ssl_context=ssl.create_default_context(),
    )


def test_a_later_exchange_with_a_shorter_limit_times_out_on_time() -> None:
    async def main() -> tuple[float, bool]:
        server, port = await _upstream()
        pool = _pool()
        key = ("http", "127.0.0.1", port, None)
        loop = asyncio.get_running_loop()
        try:
            conn = await pool.request(key, "GET", _head("/fast"), None, loop.time() + 60)
            conn.chunks.clear()
            conn.release()  # back to the pool, its timer still pending for +60 s
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.request(key, "GET", _head("/slow"), None, loop.time() + 0.3)
            return time.monotonic() - started, conn.closed
        finally:
            await pool.close()
            server.close()

    waited, closed = asyncio.run(main())
    assert 0.25 < waited < 1.5  # its own 0.3 s, not the first exchange's 60 s
    assert closed  # a timed-out connection is not reused


def test_a_pending_timer_leaves_an_idle_connection_alone() -> None:
    async def main() -> tuple[bool, bool]:
        server, port = await _upstream()
        pool = _pool()
        key = ("http", "127.0.0.1", port, None)
        loop = asyncio.get_running_loop()
        try:
            first = await pool.request(key, "GET", _head("/fast"), None, loop.time() + 0.2)
            first.chunks.clear()
            first.release()
            await asyncio.sleep(0.4)  # the timer fires with no exchange waiting: it lapses
            again = await pool.request(key, "GET", _head("/fast"), None, loop.time() + 0.2)
            return again is first, first.closed
        finally:
            await pool.close()
            server.close()

    reused, closed = asyncio.run(main())
    assert reused
    assert not closed


def test_a_timer_from_an_earlier_exchange_re_arms_for_the_current_one() -> None:
    async def main() -> float:
        server, port = await _upstream()
        pool = _pool()
        key = ("http", "127.0.0.1", port, None)
        loop = asyncio.get_running_loop()
        try:
            first = await pool.request(key, "GET", _head("/fast"), None, loop.time() + 0.3)
            first.chunks.clear()
            first.release()  # timer pending at +0.3 s
            await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(TimeoutError):  # fires at +0.3, re-arms for this one's +0.8
                await pool.request(key, "GET", _head("/slow"), None, loop.time() + 0.8)
            return time.monotonic() - started
        finally:
            await pool.close()
            server.close()

    waited = asyncio.run(main())
    assert 0.7 < waited < 1.8
