"""A lean HTTP/1.1 client for the proxy: asyncio protocols, llhttp (httptools), keep-alive pool.

Why (ADR 0024): in the proxy's profile the aiohttp client was the largest single cost per
request. This does only what the proxy needs: one request per connection at a time, the
request head and a sized body in one write, the response parsed by llhttp in C, the body handed
on as it arrives (reading paused past ``HIGH_WATER`` unread bytes, so a slow caller never makes
the proxy buffer a large answer), streamed request bodies sent chunked with write flow control,
idle connections kept per (scheme, host, port, TLS name) and reused (LIFO) for
``keepalive_timeout`` seconds.

Here too: the time limit until the answer's headers, as a loop-time ``deadline`` held by
the connection's one timer (``Connection.watch``, ADR 0035), not a timer per request.

Not here (the ``Forwarder`` does it): header rules, the body's time limits, error mapping, the
URL (a ``Target.url`` already pinned to a checked address).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools

HIGH_WATER = 1 << 20  # unread response bytes at which reading from the upstream pauses
LOW_WATER = 1 << 18  # and resumes below this
Key = tuple[str, str, int, str | None]


class ConnectFailedError(OSError):
    """No connection (refused, unreachable, TLS, connect timeout): nothing was sent."""


class ResponseFailedError(Exception):
    """The connection failed or sent something that is not HTTP/1.1 after the request went."""


class _StaleError(ResponseFailedError):
    """A reused idle connection closed before any byte of the answer: safe to send again."""


class Connection(asyncio.Protocol):
    """One upstream connection; its current exchange's state lives on it (one at a time)."""

    def __init__(self, pool: Http1Pool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._drain: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._reading_paused = False
        self.upload: asyncio.Task[None] | None = None
        # the time limit of the exchange whose answer's headers are awaited (None: no such
        # exchange); one timer per connection, not per request (``watch``)
        self.deadline: float | None = None
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._timer_at = 0.0
        self._new_exchange(head_only=False)

    def _new_exchange(self, *, head_only: bool) -> None:
        self.head_only = head_only
        self.status = 0
        self.reason = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_in: asyncio.Future[None] = self.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.until_close = False
        self.error: BaseException | None = None
        self.got_bytes = False
        self._interim = False
        self._waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.complete:  # after a HEAD answer (closed on release) or a stray byte: ignore
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ResponseFailedError(f"malformed response: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the EOF meant

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        self.pool.forget(self)
        if not self.complete:
            if self.headers_in.done() and self.until_close and exc is None:
                self.complete = True  # a body delimited by the end of the connection
                self._wake()
            elif not self.got_bytes and self.reused:
                self._fail(_StaleError("idle connection closed by the instance"))
            else:
                reason = f": {exc}" if exc else ""
                self._fail(ResponseFailedError(f"connection closed mid-response{reason}"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ResponseFailedError("connection closed while sending"))

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # ------------------------------------------------------------ httptools callbacks

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim answer (103 Early Hints…): the real one follows
            self._interim = True
            self.raw_headers = []
            self.reason = b""
            return
        self.status = status
        length = chunked = False
        for name, value in self.raw_headers:
            lower = name.lower()
            if lower == b"content-length":
                length = True
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        self.until_close = not (length or chunked) and status not in (204, 304)
        if not self.headers_in.done():
            self.headers_in.set_result(None)
        if self.head_only:  # no body follows; llhttp cannot be told so: the connection ends
            self.complete = True
            self.keep_alive = False
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self._interim or self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self.complete:
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # ------------------------------------------------------------ the exchange

    def watch(self, deadline: float) -> None:
        """Fail the exchange with ``TimeoutError`` if its headers are not in by ``deadline``.

        The connection keeps one timer across its exchanges: armed only when none is pending
        or the pending one is later than ``deadline``; when it fires it re-arms for the
        current exchange's deadline if that is still ahead, and lapses if no exchange waits.
        """
        self.deadline = deadline
        if self._timer is None or self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self._timer = None
        deadline = self.deadline
        if deadline is None:
            return
        if deadline > self.loop.time():  # a later exchange's limit
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._deadline_passed)
            return
        self._fail(TimeoutError("no answer within the time limit"))
        self.close()

    def _stop_timer(self) -> None:
        self.deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.headers_in.done():
            self.headers_in.set_exception(exc)
            self.headers_in.exception()  # retrieved here; awaiting it raises it again
        self._wake()

    async def drain(self) -> None:
        if self.closed:
            raise ResponseFailedError("connection closed while sending")
        if self._writing_paused:
            self._drain = self.loop.create_future()
            await self._drain

    async def next_chunk(self) -> bytes:
        """The next piece of the body as it arrived; ``b""`` once it is complete."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self._reading_paused and self.buffered < LOW_WATER and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return chunk

    def at_end(self) -> bool:
        """The whole body arrived and was taken."""
        return self.complete and not self.chunks and self.error is None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        self._stop_timer()
        if self.upload is not None and not self.upload.done():
            self.upload.cancel()

    def release(self) -> None:
        """Back to the pool when the exchange ended cleanly, else closed."""
        upload_done = self.upload is None or (
            self.upload.done() and not self.upload.cancelled() and self.upload.exception() is None
        )
        if self.at_end() and self.keep_alive and not self.closed and upload_done:
            self.upload = None
            self.pool.put(self)
        else:
            self.close()


def _chunked(chunk: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(chunk), chunk)


async def _send_stream(conn: Connection, source: AsyncIterator[bytes]) -> None:
    """A streamed request body, chunked, with write flow control; then the last chunk."""
    transport = conn.transport
    if transport is None:
        raise ResponseFailedError("not connected")
    async for chunk in source:
        if chunk:
            if conn.closed:
                raise ResponseFailedError("connection closed while sending")
            transport.write(_chunked(chunk))
            await conn.drain()
    if not conn.closed:
        transport.write(b"0\r\n\r\n")


def _swallow(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: its failure reaches the caller through the exchange


class Http1Pool:
    """Connections per (scheme, host, port, TLS name); see the module docstring."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        keepalive_timeout: float,
        max_idle_per_host: int,
        ssl_context: ssl.SSLContext,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_idle = max_idle_per_host
        self.ssl_context = ssl_context
        self._idle: dict[Key, list[Connection]] = {}
        self._open: set[Connection] = set()

    # ------------------------------------------------------------ connections

    def put(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.loop.time()
        conn._new_exchange(head_only=False)
        idle.append(conn)

    def forget(self, conn: Connection) -> None:
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def _take_idle(self, key: Key) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_allowed = self.loop.time() - self.keepalive_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since >= oldest_allowed:
                conn.reused = True
                return conn
            conn.close()
        return None

    async def _connect(self, key: Key) -> Connection:
        scheme, host, port, server_name = key
        tls = scheme == "https"
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self, key),
                    host,
                    port,
                    ssl=self.ssl_context if tls else None,
                    server_hostname=(server_name or host) if tls else None,
                )
        except TimeoutError as exc:
            raise ConnectFailedError(f"timed out after {self.connect_timeout} s") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailedError(str(exc) or type(exc).__name__) from exc
        self._open.add(conn)
        return conn

    async def close(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()

    # ------------------------------------------------------------ requests

    async def request(
        self,
        key: Key,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        deadline: float | None = None,
    ) -> Connection:
        """Send ``head`` (+ ``body``) on a pooled or new connection; returns once the answer's
        headers are in. ``head`` frames the body already (Content-Length or chunked).
        ``deadline`` (loop time): ``TimeoutError`` if the headers are not in by then, a
        connection included."""
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, method, head, body, deadline)
            except _StaleError:
                if not isinstance(body, bytes | None):
                    raise
                conn.close()  # the instance closed it as we sent: once more, fresh
        if deadline is None:
            conn = await self._connect(key)
        else:
            async with asyncio.timeout_at(deadline):  # a new connection: rare on the hot path
                conn = await self._connect(key)
        return await self._exchange(conn, method, head, body, deadline)

    async def _exchange(
        self,
        conn: Connection,
        method: str,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None,
        deadline: float | None,
    ) -> Connection:
        conn._new_exchange(head_only=method == "HEAD")
        transport = conn.transport
        if transport is None:
            raise ResponseFailedError("not connected")
        if deadline is not None:
            conn.watch(deadline)
        try:
            if body is None:
                transport.write(head)
            elif isinstance(body, bytes):
                transport.write(head + body)
            else:
                transport.write(head)
                conn.upload = asyncio.ensure_future(_send_stream(conn, body))
                conn.upload.add_done_callback(_swallow)
                headers_or_upload: set[asyncio.Future[Any]] = {conn.headers_in, conn.upload}
                await asyncio.wait(headers_or_upload, return_when=asyncio.FIRST_COMPLETED)
                if not conn.headers_in.done() and conn.upload.exception() is not None:
                    raise conn.upload.exception()  # type: ignore[misc]
            await conn.headers_in
        except BaseException:
            conn.close()
            raise
        finally:
            conn.deadline = None  # the timer, if pending, lapses when it fires
        return conn
