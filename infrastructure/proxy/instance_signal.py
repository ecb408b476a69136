"""A cheap "this user's instances changed" signal, so every process may cache instance lists.

The marketplace bumps the owner's signal after saving a change into or out of ``running``
(before the command answers); the proxy reuses a cached instance list only while the signal
still reads what it read before that list was loaded. So the answer "running" or "destroyed"
is what the user's next proxied request sees, on any process.

- ``RedisInstanceSignal`` (replicas sharing Redis): a counter per user; the proxy reads it on
  the event loop (``aread``: ``redis.asyncio``, one ``MGET`` per batch of concurrent lookups,
  each batch started after its lookups were asked).
- ``FileInstanceSignal`` (embedded set-up, one machine): one file in ``DATA_DIR`` for all
  users that grows a byte per bump; reading it is one ``stat``.
- ``NoInstanceSignal`` (PostgreSQL without Redis): never equal, so every lookup reloads.

A signal that cannot be read (Redis down) reads as "changed"; a bump that fails is logged
(the list's one-second reuse then bounds how long a change can go unseen).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class InstanceSignal(Protocol):
    cheap: bool  # True: ``read`` may run on the event loop (no network)

    def read(self, owner: str) -> object: ...
    def bump(self, owner: str) -> None: ...


_ASYNC_KEYS = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "socket_timeout",
        "socket_connect_timeout",
        "health_check_interval",
        "client_name",
    }
)


def async_twin(client: Any) -> Any | None:
    """A ``redis.asyncio`` client to the same server as the sync ``client`` (None: unknown
    connection kind, so callers keep using the sync one in a thread)."""
    import redis.asyncio as aredis
    from redis import connection as sync

    pool = client.connection_pool
    kinds = {
        sync.Connection: aredis.Connection,
        sync.SSLConnection: aredis.SSLConnection,
        sync.UnixDomainSocketConnection: aredis.UnixDomainSocketConnection,
    }
    kind = kinds.get(pool.connection_class)
    if kind is None:
        return None
    kwargs = {
        k: v
        for k, v in pool.connection_kwargs.items()
        if k in _ASYNC_KEYS or (kind is aredis.SSLConnection and k.startswith("ssl_"))
    }
    pool = aredis.ConnectionPool(connection_class=kind, **kwargs)
    return aredis.Redis.from_pool(pool)  # closing the client closes its pool


class _Batches:
    """One event loop's reads: one MGET for every owner asked while the previous one ran.

    A read asked while an MGET is in flight waits for the next one, so every answer comes from
    a read that started after it was asked (what read-your-writes needs).
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.pending: dict[str, list[asyncio.Future[object]]] = {}
        self.running = False

    async def read(self, owner: str) -> object:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.setdefault(owner, []).append(future)
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, {}
                owners = list(batch)
                try:
                    values = await self.client.mget([self.prefix + o for o in owners])
                    marks: list[object] = [0 if v is None else int(v) for v in values]
                except Exception:  # Redis unreachable: trust no cached list
                    log.warning("instance signal unreadable; reloading instances", exc_info=True)
                    marks = [object() for _ in owners]
                for owner, mark in zip(owners, marks, strict=True):
                    for future in batch[owner]:
                        if not future.done():
                            future.set_result(mark)
        finally:
            self.running = False


class RedisInstanceSignal:
    """A counter per user in Redis. ``read`` is one blocking GET; ``aread`` (the proxy's hot
    path) reads through ``redis.asyncio`` on the event loop, batched (``_Batches``)."""

    cheap = False
    PREFIX = "gpuproxy:instances-epoch:"

    def __init__(self, client: Any) -> None:
        self.client = client
        self._batches: dict[asyncio.AbstractEventLoop, _Batches | None] = {}

    async def aread(self, owner: str) -> object:
        """``read`` without a worker thread (one MGET per batch of concurrent reads)."""
        loop = asyncio.get_running_loop()
        batches = self._batches.get(loop, False)
        if batches is False:
            twin = async_twin(self.client)
            batches = None if twin is None else _Batches(twin, self.PREFIX)
            self._batches = {k: v for k, v in self._batches.items() if not k.is_closed()}
            self._batches[loop] = batches
        if batches is None:
            return await asyncio.to_thread(self.read, owner)
        return await batches.read(owner)  # type: ignore[union-attr]

    async def aclose(self) -> None:
        """Close this event loop's ``redis.asyncio`` client (the runtime's shutdown)."""
        batches = self._batches.pop(asyncio.get_running_loop(), None)
        if batches:
            await batches.client.aclose()

    def read(self, owner: str) -> object:
        try:
            value = self.client.get(self.PREFIX + owner)
        except Exception:  # Redis unreachable: trust no cached list
            log.warning("instance signal unreadable; reloading instances", exc_info=True)
            return object()
        return 0 if value is None else int(value)

    def bump(self, owner: str) -> None:
        try:
            self.client.incr(self.PREFIX + owner)
        except Exception:
            log.warning("instance signal for %s not bumped", owner, exc_info=True)


class FileInstanceSignal:
    """One file's size. In the event loop that first read it, a read is one ``stat`` per
    loop tick: the value is kept until a callback queued behind it runs, which is before any
    I/O that the loop sees after the ``stat`` is handled, so a request that arrives after a
    bump (by any process) still reads the bump. A bump here forgets it at once."""

    cheap = True

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tick_value: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    def read(self, owner: str) -> object:  # noqa: ARG002 - one file for every user
        value = self._tick_value
        if value is not None and threading.get_ident() == self._thread:
            loop = self._loop
            if loop is not None and loop.is_running():
                return value
        try:
            value = os.stat(self.path).st_size
        except FileNotFoundError:
            value = 0
        loop = self._loop
        if loop is None or loop.is_closed():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop in this thread: no keeping
                return value
            self._loop, self._thread = loop, threading.get_ident()
        elif threading.get_ident() != self._thread or not loop.is_running():
            return value
        if self._tick_value is None:
            loop.call_soon(self._forget)
        self._tick_value = value
        return value

    def _forget(self) -> None:
        self._tick_value = None

    def bump(self, owner: str) -> None:  # noqa: ARG002 - one file for every user
        with self.path.open("ab") as handle:
            handle.write(b".")
        self._tick_value = None


class LocalInstanceSignal:
    """One process only (a runtime built without a shared signal): counters in memory."""

    cheap = True

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def read(self, owner: str) -> object:
        return self._counts.get(owner, 0)

    def bump(self, owner: str) -> None:
        self._counts[owner] = self._counts.get(owner, 0) + 1


class NoInstanceSignal:
    cheap = True

    def read(self, owner: str) -> object:  # noqa: ARG002 - nothing to read
        return object()  # equal to nothing: every lookup reloads

    def bump(self, owner: str) -> None:  # noqa: ARG002 - nothing to tell
        return None


def instance_signal(db_type: str, data_dir: Path, redis: Any | None) -> InstanceSignal:
    """The signal for this set-up (see the module docstring)."""
    if redis is not None:
        return RedisInstanceSignal(redis)
    if db_type == "sqlite":
        return FileInstanceSignal(data_dir / "instances.epoch")
    return NoInstanceSignal()
