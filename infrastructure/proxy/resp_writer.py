"""A lean Redis writer for the proxy fee tally's hot path (docs/adr/0029).

One persistent asyncio connection speaking RESP2 directly: ``incrby`` writes its ``INCRBY``
commands (pre-encoded key prefixes) to the socket at once and waits for as many replies.
Callers may overlap (pipelining): replies come back in the order the commands were written,
so each caller takes the next ones off a FIFO. Every reply the tally can get is one line
(``:<n>`` for ``INCRBY``, ``+OK`` for ``AUTH``/``SELECT``, ``-<error>``), so parsing is
splitting lines; anything else is a protocol error and drops the connection.

A lost connection fails every caller waiting on it; the next call connects again. A caller
that gives up (cancelled, e.g. by a timeout) also drops the connection, so a later caller
never waits behind a stuck one. ``for_client`` builds a writer to the server a sync
``redis.Redis`` talks to (host/port or unix socket, username/password, db, client name),
or answers None where it cannot (TLS, a credential provider, another connection kind): the
caller then keeps redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

_PREFIXES_KEPT = 4096  # encoded key prefixes cached (one per lease key)
_HANDLED = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "client_name",
        "socket_connect_timeout",
    }
)


class ReplyError(Exception):
    """Redis answered ``-ERR …`` (e.g. ``WRONGTYPE``) to one of a call's commands."""


def command(*parts: bytes) -> bytes:
    """``parts`` as one RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


class _Waiter:
    __slots__ = ("error", "future", "left")

    def __init__(self, future: asyncio.Future[None], left: int) -> None:
        self.future = future
        self.left = left
        self.error: bytes | None = None


class _Protocol(asyncio.Protocol):
    """Matches reply lines to waiters in write order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.buffer = b""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        start = 0
        waiters = self.waiters
        while True:
            end = buffer.find(b"\r\n", start)
            if end < 0:
                break
            kind = buffer[start : start + 1]
            if not waiters or kind not in (b":", b"+", b"-"):
                self.fail(ConnectionError(f"unexpected Redis reply {buffer[start:end]!r}"))
                return
            waiter = waiters[0]
            if kind == b"-" and waiter.error is None:
                waiter.error = buffer[start + 1 : end]
            waiter.left -= 1
            if waiter.left == 0:
                waiters.popleft()
                if not waiter.future.done():
                    if waiter.error is None:
                        waiter.future.set_result(None)
                    else:
                        waiter.future.set_exception(
                            ReplyError(waiter.error.decode(errors="replace"))
                        )
            start = end + 2
        self.buffer = buffer[start:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))

    def fail(self, exc: Exception) -> None:
        """Drop the connection; every waiting caller gets ``exc``."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiters:
            future = self.waiters.popleft().future
            if not future.done():
                future.set_exception(exc)
                future.exception()  # a caller that gave up never reads it: no warning

    def send(self, payload: bytes, replies: int) -> asyncio.Future[None]:
        if self.transport is None or self.closed:
            raise ConnectionError("Redis connection closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(_Waiter(future, replies))
        self.transport.write(payload)
        return future


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read a connect's outcome so one whose callers all gave up logs no warning."""
    if not future.cancelled():
        future.exception()


class RespWriter:
    """``INCRBY`` batches on one persistent connection; one instance per event loop."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.hello = self._handshake(db, username, password, client_name)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._prefixes: dict[str, bytes] = {}

    @classmethod
    def for_client(cls, client: Any) -> RespWriter | None:
        """A writer to ``client``'s server, or None where this writer cannot connect the way
        ``client`` does (TLS, credential providers, unknown connection kinds)."""
        from redis import connection as sync

        pool = client.connection_pool
        if pool.connection_class not in (sync.Connection, sync.UnixDomainSocketConnection):
            return None
        kwargs = pool.connection_kwargs
        if kwargs.get("credential_provider") is not None:
            return None
        picked = {k: v for k, v in kwargs.items() if k in _HANDLED and v is not None}
        picked.pop("socket_connect_timeout", None)  # the caller's timeout bounds the connect
        return cls(**picked)

    @staticmethod
    def _handshake(
        db: int, username: str | None, password: str | None, client_name: str | None
    ) -> list[bytes]:
        hello = []
        if password is not None:
            auth = [b"AUTH"] + ([username.encode()] if username else []) + [password.encode()]
            hello.append(command(*auth))
        if int(db):
            hello.append(command(b"SELECT", str(int(db)).encode()))
        if client_name:
            hello.append(command(b"CLIENT", b"SETNAME", client_name.encode()))
        return hello

    def _prefix(self, key: str) -> bytes:
        prefix = self._prefixes.get(key)
        if prefix is None:
            if len(self._prefixes) >= _PREFIXES_KEPT:
                self._prefixes.clear()
            raw = key.encode()
            prefix = b"*3\r\n$6\r\nINCRBY\r\n$%d\r\n%s\r\n" % (len(raw), raw)
            self._prefixes[key] = prefix
        return prefix

    async def incrby(self, increments: dict[str, int]) -> None:
        """``INCRBY key n`` for each item, pipelined; returns once Redis answered them all.
        Raises ``ReplyError`` if Redis refused one (the others are applied), ``OSError`` /
        ``ConnectionError`` if the connection failed (some may be applied)."""
        parts = []
        for key, amount in increments.items():
            text = b"%d" % amount
            parts.append(b"%s$%d\r\n%s\r\n" % (self._prefix(key), len(text), text))
        protocol = self._protocol
        if protocol is None or protocol.closed:
            protocol = await self._connect()
        future = protocol.send(b"".join(parts), len(parts))
        try:
            await future
        except asyncio.CancelledError:
            protocol.fail(ConnectionError("a caller gave up waiting"))
            raise

    async def _connect(self) -> _Protocol:
        if self._connecting is None or self._connecting.done():  # done: its callers gave up
            self._connecting = asyncio.ensure_future(self._open())
            self._connecting.add_done_callback(_retrieve)
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self.path is not None:
            _, protocol = await loop.create_unix_connection(_Protocol, self.path)
        else:
            _, protocol = await loop.create_connection(_Protocol, self.host, self.port)
        if self.hello:
            try:
                await protocol.send(b"".join(self.hello), len(self.hello))
            except BaseException:
                protocol.fail(ConnectionError("Redis handshake failed"))
                raise
        self._protocol = protocol
        return protocol

    def close(self) -> None:
        """Drop the connection (waiting callers fail)."""
        if self._protocol is not None:
            self._protocol.fail(ConnectionError("writer closed"))
            self._protocol = None
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
