"""The server's protocol writes a response's head together with its body (``http_writes.py``).

A real uvicorn server with the server's protocol (``BoundedHttpProtocol``) on a loopback port,
raw sockets as clients; the connection's transport is wrapped to count the writes it gets.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from interfaces.http_limits import BoundedHttpProtocol

Scope = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]
SLOW_BODY_SECONDS = 0.5


class CountingTransport:
    """The real transport, recording each write (what one ``send`` system call gets)."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self.transport = transport
        self.writes = writes

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def writelines(self, pieces: Any) -> None:
        pieces = list(pieces)
        self.writes.append(b"".join(pieces))
        self.transport.writelines(pieces)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow":  # the head now, the body later
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(SLOW_BODY_SECONDS)
        await send({"type": "http.response.body", "body": b"late", "more_body": False})
        return
    if path == "/chunks":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one", b"two", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = b'{"status":"ok"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@asynccontextmanager
async def serving(writes: list[bytes]) -> AsyncIterator[tuple[str, int]]:
    class Counted(BoundedHttpProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(CountingTransport(transport, writes))  # type: ignore[arg-type]

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=Counted, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()
    finally:
        server.should_exit = True
        await task
        sock.close()


async def _exchange(address: tuple[str, int], request: bytes, until: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    data = b""
    while not data.endswith(until):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        assert chunk, data
        data += chunk
    writer.close()
    return data


def test_a_response_head_and_body_leave_in_one_write() -> None:
    async def go() -> list[bytes]:
        writes: list[bytes] = []
        async with serving(writes) as address:
            got = await _exchange(address, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", b"}")
        assert got.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got.endswith(b'\r\n\r\n{"status":"ok"}')
        return writes

    writes = asyncio.run(go())
    assert len(writes) == 1, writes  # two before: the head, then the body
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b'{"status":"ok"}')


def test_a_head_is_not_held_for_a_slow_body() -> None:
    async def go() -> tuple[float, float, bytes]:
        writes: list[bytes] = []
        async with serving(writes) as address:
            reader, writer = await asyncio.open_connection(*address)
            start = time.monotonic()
            writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            data = await asyncio.wait_for(reader.read(65536), 5)
            head_after = time.monotonic() - start
            while not data.endswith(b"0\r\n\r\n"):
                data += await asyncio.wait_for(reader.read(65536), 5)
            body_after = time.monotonic() - start
            writer.close()
        return head_after, body_after, data

    head_after, body_after, data = asyncio.run(go())
    assert head_after < SLOW_BODY_SECONDS / 2, head_after  # the next tick, not the body
    assert body_after >= SLOW_BODY_SECONDS * 0.9, body_after
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"4\r\nlate\r\n0\r\n\r\n")


def test_head_requests_empty_bodies_and_streams_are_whole_and_in_order() -> None:
    async def go() -> tuple[bytes, bytes, bytes, list[bytes]]:
        writes: list[bytes] = []
        async with serving(writes) as address:
            head = await _exchange(address, b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n", b"\r\n\r\n")
            empty = await _exchange(address, b"GET /empty HTTP/1.1\r\nHost: t\r\n\r\n", b"\r\n\r\n")
            chunks = await _exchange(
                address, b"GET /chunks HTTP/1.1\r\nHost: t\r\n\r\n", b"0\r\n\r\n"
            )
        return head, empty, chunks, writes

    head, empty, chunks, writes = asyncio.run(go())
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 15" in head
    assert head.endswith(b"\r\n\r\n")
    assert b"status" not in head
    assert empty.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert chunks.startswith(b"HTTP/1.1 200 OK\r\n")
    assert chunks.endswith(b"\r\n\r\n3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n")
    assert len(writes) == 1 + 1 + 4  # HEAD: the head; 204: the head; the stream: 4 writes


def test_keep_alive_requests_each_get_their_whole_answer() -> None:
    async def go() -> bytes:
        writes: list[bytes] = []
        async with serving(writes) as address:
            reader, writer = await asyncio.open_connection(*address)
            data = b""
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                part = b""
                while not part.endswith(b"}"):
                    part += await asyncio.wait_for(reader.read(65536), 5)
                data += part
            writer.close()
        assert len(writes) == 3, writes
        return data

    assert asyncio.run(go()).count(b"HTTP/1.1 200 OK\r\n") == 3
