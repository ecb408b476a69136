"""The proxy fee tally in Redis: what each credit lease spent, surviving its process.

Keys (docs/adr/0029-durable-proxy-fee-tally.md):

- ``gpuproxy:lease-tally:{hold_id}``: micro-USD spent from the lease (``INCRBY`` per fee,
  negative for a refund); set to the owner's spend with a ``KEEP_SECONDS`` expiry when the
  lease is registered (again) (``INCRBY`` keeps it), deleted when the lease is released or
  recovered;
- ``gpuproxy:proxy-leases``: a hash, hold id -> the ``LeaseEntry`` (JSON) recovery needs;
- ``gpuproxy:proxy-alive:{process_id}``: set every ``BEAT_EVERY`` by the owner, expiring
  after ``ALIVE_SECONDS``; while it exists recovery leaves the process's leases alone;
- ``gpuproxy:proxy-missing:{process_id}``: the Redis time at which recovery first found the
  liveness mark gone; each beat deletes it (the owner was seen again);
- ``gpuproxy:lease-usable:{hold_id}``: set at registration, expiring ``GRACE`` after the
  owner's last moment of use (a duration, so counted on Redis's clock, not the owner's);
  recovery takes a live owner's lease only once it is gone.

The hot path (``add``) runs on the event loop: the adds of one event-loop tick go out together
(one ``INCRBY`` per lease, pipelined), through ``RespWriter`` (one persistent connection
speaking RESP itself, ``resp_writer.py``) where it can connect the way the client does, else
through ``redis.asyncio`` (TLS, credential providers, ``lean=False``). One
such write is in flight at a time (adds meanwhile wait for the next), so the writes of a lease
are applied in the order they were made. A write that fails or takes longer than
``WRITE_TIMEOUT`` answers False (logged): the fee stays in the owner's memory and is captured
as before, only not recoverable if the owner dies too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from domain.ports.fee_tally import LeaseEntry
from infrastructure.proxy.instance_signal import async_twin
from infrastructure.proxy.resp_writer import RespWriter

log = logging.getLogger(__name__)

TALLY = "gpuproxy:lease-tally:"
LEASES = "gpuproxy:proxy-leases"
ALIVE = "gpuproxy:proxy-alive:"
MISSING = "gpuproxy:proxy-missing:"
USABLE = "gpuproxy:lease-usable:"
GRACE = timedelta(seconds=10)  # a live owner's lease outlasts its last moment of use this long
ALIVE_SECONDS = 15
KEEP_SECONDS = 24 * 3600  # a tally outlives its hold (10 min) by far
WRITE_TIMEOUT = 1.0


def _encode(entry: LeaseEntry) -> str:
    return json.dumps(
        {
            "user_id": entry.user_id,
            "process_id": entry.process_id,
            "usable_until": entry.usable_until.isoformat(),
            "expires_at": entry.expires_at.isoformat(),
        }
    )


def _decode(hold_id: str, raw: str | bytes) -> LeaseEntry:
    data = json.loads(raw)
    return LeaseEntry(
        hold_id,
        str(data["user_id"]),
        str(data["process_id"]),
        datetime.fromisoformat(data["usable_until"]),
        datetime.fromisoformat(data["expires_at"]),
    )


class RedisFeeTally:
    """``FeeTally`` on Redis. ``client`` is a sync ``redis.Redis`` (recovery uses it from a
    thread); the event-loop side uses an async twin to the same server, and for the fees
    (``add``) a ``RespWriter`` unless ``lean`` is False or it cannot connect that way."""

    def __init__(self, client: Any, *, lean: bool = True) -> None:
        self.client = client
        self.lean = lean
        self.failures = 0  # batches not stored (for metrics and tests)
        self._aclient: Any = None
        self._writer: RespWriter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, int] = {}
        self._future: asyncio.Future[bool] | None = None
        self._drainer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ event loop side

    def _async(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._aclient = loop, async_twin(self.client)
            self._writer = RespWriter.for_client(self.client) if self.lean else None
            self._pending, self._future, self._drainer = {}, None, None
        return self._aclient

    def add(self, hold_id: str, amount: int) -> asyncio.Future[bool]:
        self._async()
        loop = asyncio.get_running_loop()
        self._pending[hold_id] = self._pending.get(hold_id, 0) + amount
        if self._future is None:
            self._future = loop.create_future()
        future = self._future
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        future = None
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                future, self._future = self._future, None
                ok = await self._store(batch)
                if not ok:
                    self.failures += 1
                if future is not None and not future.done():
                    future.set_result(ok)
        finally:
            self._drainer = None
            if future is not None and not future.done():  # cancelled (shutdown): not stored
                future.set_result(False)

    async def _store(self, batch: dict[str, int]) -> bool:
        """One tick's fees; True if all stored within ``WRITE_TIMEOUT``."""
        writer = self._writer
        if writer is None:
            return await self._run(self._increments(batch))
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.incrby({TALLY + hold_id: n for hold_id, n in batch.items()})
            return True
        except Exception:
            log.warning("proxy fee tally: %d writes not stored", len(batch), exc_info=True)
            return False

    @staticmethod
    def _increments(batch: dict[str, int]) -> list[tuple[str, tuple[Any, ...]]]:
        return [("incrby", (TALLY + hold_id, amount)) for hold_id, amount in batch.items()]

    async def _run(self, ops: list[tuple[str, tuple[Any, ...]]]) -> bool:
        """One command, or one pipeline (no MULTI), on the event loop; True if all stored."""
        client = self._async()
        try:
            if client is None:  # an unknown connection kind: the sync client in a thread
                return await asyncio.to_thread(self._run_sync, ops)
            async with asyncio.timeout(WRITE_TIMEOUT):
                if len(ops) == 1:  # the common case: cheaper than a pipeline
                    name, args = ops[0]
                    await getattr(client, name)(*args)
                else:
                    pipe = client.pipeline(transaction=False)
                    for name, args in ops:
                        getattr(pipe, name)(*args)
                    await pipe.execute()
            return True
        except Exception:
            log.warning("proxy fee tally: %d writes not stored", len(ops), exc_info=True)
            return False

    def _run_sync(self, ops: list[tuple[str, tuple[Any, ...]]]) -> bool:
        pipe = self.client.pipeline(transaction=False)
        for name, args in ops:
            getattr(pipe, name)(*args)
        pipe.execute()
        return True

    async def register(self, entry: LeaseEntry, usable_for: timedelta, spent: int) -> bool:
        usable_ms = max(1, int((usable_for + GRACE).total_seconds() * 1000))
        return await self._run(
            [  # the hash entry last: recovery never sees it without its usable mark
                ("set", (ALIVE + entry.process_id, 1, ALIVE_SECONDS)),
                ("set", (USABLE + entry.hold_id, 1, None, usable_ms)),
                ("set", (TALLY + entry.hold_id, spent, KEEP_SECONDS)),
                ("hset", (LEASES, entry.hold_id, _encode(entry))),
            ]
        )

    async def registered(self, hold_ids: list[str]) -> set[str]:
        """Which of ``hold_ids`` recovery knows (a Redis flush or restart forgets them)."""
        if not hold_ids:
            return set()
        client = self._async()
        async with asyncio.timeout(WRITE_TIMEOUT):
            if client is None:  # an unknown connection kind: the sync client in a thread
                found = await asyncio.to_thread(self.client.hmget, LEASES, hold_ids)
            else:
                found = await client.hmget(LEASES, hold_ids)
        return {h for h, raw in zip(hold_ids, found, strict=True) if raw is not None}

    async def forget(self, hold_id: str) -> None:
        await self._run(
            [("hdel", (LEASES, hold_id)), ("delete", (TALLY + hold_id, USABLE + hold_id))]
        )

    async def beat(self, process_id: str) -> None:
        await self._run(
            [("set", (ALIVE + process_id, 1, ALIVE_SECONDS)), ("delete", (MISSING + process_id,))]
        )

    async def aclose(self) -> None:
        if self._drainer is not None:
            await asyncio.gather(self._drainer, return_exceptions=True)
        if self._aclient is not None and self._loop is asyncio.get_running_loop():
            await self._aclient.aclose()
        if self._writer is not None:
            self._writer.close()
        self._aclient, self._writer, self._loop = None, None, None

    # ------------------------------------------------------------ recovery side (sync)

    def entries(self) -> list[LeaseEntry]:
        """Every registered lease not yet forgotten."""
        raw = self.client.hgetall(LEASES)
        found = []
        for key, value in raw.items():
            hold_id = key.decode() if isinstance(key, bytes) else str(key)
            try:
                found.append(_decode(hold_id, value))
            except (ValueError, KeyError, TypeError):
                log.warning("proxy fee tally: unreadable lease entry %s dropped", hold_id)
                self.client.hdel(LEASES, hold_id)
        return found

    def alive(self, process_ids: set[str]) -> set[str]:
        """Which of ``process_ids`` marked themselves alive within ``ALIVE_SECONDS``."""
        ids = sorted(process_ids)
        pipe = self.client.pipeline(transaction=False)
        for process_id in ids:
            pipe.exists(ALIVE + process_id)
        return {p for p, there in zip(ids, pipe.execute(), strict=True) if there}

    def missing_for(self, process_ids: set[str]) -> dict[str, float]:
        """For each of ``process_ids`` (liveness mark gone) that an earlier call already found
        gone, with no beat since: the seconds since then, on Redis's clock. The others are
        noted now and left out."""
        ids = sorted(process_ids)
        secs, usecs = self.client.time()
        now = secs + usecs / 1e6
        pipe = self.client.pipeline(transaction=False)
        for process_id in ids:
            pipe.set(MISSING + process_id, repr(now), ex=KEEP_SECONDS, nx=True)
            pipe.get(MISSING + process_id)
        replies = pipe.execute()
        return {
            p: max(0.0, now - float(replies[2 * i + 1]))
            for i, p in enumerate(ids)
            if not replies[2 * i] and replies[2 * i + 1] is not None  # noted before, not now
        }

    def usable(self, hold_ids: list[str]) -> set[str]:
        """Which of ``hold_ids`` their owner may still be spending from."""
        pipe = self.client.pipeline(transaction=False)
        for hold_id in hold_ids:
            pipe.exists(USABLE + hold_id)
        return {h for h, there in zip(hold_ids, pipe.execute(), strict=True) if there}

    def tallied(self, hold_id: str) -> int:
        """Micro-USD the lease's owner answered fees for (0 if none is recorded)."""
        value = self.client.get(TALLY + hold_id)
        return 0 if value is None else int(value)

    def drop(self, hold_id: str) -> None:
        """``forget`` from a thread (recovery)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hdel(LEASES, hold_id)
        pipe.delete(TALLY + hold_id, USABLE + hold_id)
        pipe.execute()
