"""The proxy's lean HTTP/1.1 client (``infrastructure/proxy/http1.py``) through ``Forwarder``,
against real loopback servers (``asyncio.start_server``) whose behaviour each test controls:
HEAD answers, a keep-alive connection the instance drops as the next request arrives, and
reading paused while a large answer is not taken."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from infrastructure.proxy.forwarder import Forwarder
from infrastructure.proxy.http1 import HIGH_WATER

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str, list[int]]:
    """A server calling ``handler(reader, writer, nth request on this connection)`` until it
    returns False; returns the server, its base URL and the connection count (a list)."""
    connections = [0]

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        nth = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                nth += 1
                if not await handler(reader, writer, nth):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


def _answer(body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (size, body)


async def test_head_gives_the_announced_length_and_no_body() -> None:
    heads: list[bool] = []  # requests answered, on any connection

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> bool:
        del nth
        heads.append(True)
        writer.write(_answer(b"", length=1000) if len(heads) == 1 else _answer(b"after"))
        await writer.drain()
        return True

    server, base, _ = await _serve(handler)
    async with server, Forwarder() as fwd:
        head = await fwd.send("HEAD", f"{base}/x", {}, None, timeout=5)
        assert head.status == 200
        assert head.content_length == 1000
        assert await head.read() == b""
        after = await fwd.send("GET", f"{base}/x", {}, None, timeout=5)
        assert await after.read() == b"after"


async def test_a_kept_connection_dropped_as_the_next_request_arrives_is_retried_once() -> None:
    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> bool:
        if nth == 2:  # an instance closing its idle connection just as the request came
            return False
        writer.write(_answer(b"ok"))
        await writer.drain()
        return True

    server, base, connections = await _serve(handler)
    async with server, Forwarder() as fwd:
        for _ in range(2):
            response = await fwd.send("GET", f"{base}/x", {}, None, timeout=5)
            assert response.status == 200
            assert await response.read() == b"ok"
    assert connections[0] == 2  # the second request went again on a fresh connection


async def test_reading_pauses_while_a_large_answer_is_not_taken() -> None:
    size = 16 * HIGH_WATER
    sent = asyncio.Event()

    async def handler(_: asyncio.StreamReader, writer: asyncio.StreamWriter, nth: int) -> bool:
        del nth
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        piece = b"x" * 65_536
        for _number in range(size // len(piece)):
            writer.write(piece)
            await writer.drain()
        sent.set()
        return True

    server, base, _ = await _serve(handler)
    async with server, Forwarder() as fwd:
        response = await fwd.send("GET", f"{base}/big", {}, None, timeout=30)
        chunks = response.iter_chunks()
        got = len(await anext(chunks))
        conn = response._conn
        assert conn is not None
        for _ in range(200):  # let the upstream write as much as the proxy takes
            await asyncio.sleep(0.005)
        assert conn._reading_paused
        assert conn.buffered <= HIGH_WATER + 262_144  # held back: not the whole answer
        assert not sent.is_set()
        async for chunk in chunks:
            got += len(chunk)
        assert got == size
