"""How feed batches travel: in-process (embedded default) or Redis pub/sub (several processes).

``RedisBus``: the process holding a short lease in Redis (``SET NX PX``, renewed while it
lives) tails the log and publishes each batch on one channel; every process, the tailer
included, subscribes and hands what it hears to its feed. A process that loses the lease
stops tailing; another takes over within the lease time, starting from its own cursor, and
the feeds' range checks absorb any overlap or gap. Keys and channel are namespaced by the
database, so deployments (or test runs) sharing one Redis never hear each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from typing import Any

from infrastructure.feed.feed import EventFeed, FeedBatch, decode_batch, encode_batch
from infrastructure.settings import Settings

log = logging.getLogger(__name__)
LEASE_MS = 3000
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def feed_namespace(settings: Settings) -> str:
    """Redis key prefix for this deployment's feed (one per database)."""
    if settings.db.type == "sqlite":
        where = str(settings.db.sqlite_path.resolve())
    else:
        where = f"{settings.db.host}:{settings.db.port}/{settings.db.name}"
    digest = hashlib.sha256(f"{settings.db.type}:{where}".encode()).hexdigest()[:16]
    return f"gpuproxy:feed:{digest}"


class MemoryBus:
    """One process: it tails the log itself and feeds its own subscribers."""

    async def run(self, feed: EventFeed) -> None:
        await feed.tailer(feed.cursor).run(feed.put)

    async def aclose(self) -> None:
        return None


class RedisBus:
    """Redis pub/sub between processes, with one elected tailer (see the module docstring)."""

    def __init__(self, url: str, namespace: str, *, lease_ms: int = LEASE_MS) -> None:
        self.url = url
        self.channel = f"{namespace}:events"
        self.leader_key = f"{namespace}:tailer"
        self.token = uuid.uuid4().hex
        self.lease_ms = lease_ms
        self.is_leader = False
        self._client: Any = None
        self._listen_client: Any = None

    async def run(self, feed: EventFeed) -> None:
        import redis.asyncio as aioredis

        # Clients belong to the running loop: made here, closed in ``aclose``.
        self._client = aioredis.Redis.from_url(
            self.url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        self._listen_client = aioredis.Redis.from_url(
            self.url, socket_connect_timeout=5, health_check_interval=30
        )
        await asyncio.gather(self._listen(feed), self._lead(feed))

    async def aclose(self) -> None:
        if self._client is None:
            return
        if self.is_leader:
            with contextlib.suppress(Exception):
                await self._client.eval(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
                    "return redis.call('DEL', KEYS[1]) end return 0",
                    1,
                    self.leader_key,
                    self.token,
                )
        await self._client.aclose()
        await self._listen_client.aclose()

    # ------------------------------------------------------------ every process

    async def _listen(self, feed: EventFeed) -> None:
        while True:
            pubsub = self._listen_client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    try:
                        feed.offer(decode_batch(message["data"]))
                    except ValueError:
                        log.warning("event feed: ignored a malformed message on %s", self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down: the feed's watchdog reads the log meanwhile
                log.warning("event feed: Redis subscription lost (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # ------------------------------------------------------------ the tailer

    async def _lead(self, feed: EventFeed) -> None:
        tail: asyncio.Task[None] | None = None
        try:
            while True:
                try:
                    held = await self._hold_lease()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("event feed: lease check failed (%s)", exc)
                    held = False
                if held and tail is None:
                    log.info("event feed: this process tails the log from %d", feed.cursor)
                    tail = asyncio.create_task(feed.tailer(feed.cursor).run(self._publish))
                elif not held and tail is not None:
                    tail.cancel()
                    await asyncio.gather(tail, return_exceptions=True)
                    tail = None
                self.is_leader = held
                await asyncio.sleep(self.lease_ms / 3000)
        finally:
            if tail is not None:
                tail.cancel()
                await asyncio.gather(tail, return_exceptions=True)

    async def _hold_lease(self) -> bool:
        if self.is_leader:
            renewed = await self._client.eval(
                RENEW, 1, self.leader_key, self.token, str(self.lease_ms)
            )
            if renewed:
                return True
        acquired = await self._client.set(self.leader_key, self.token, nx=True, px=self.lease_ms)
        return bool(acquired)

    async def _publish(self, batch: FeedBatch) -> None:
        try:
            await self._client.publish(self.channel, encode_batch(batch))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # subscribers fill the gap from the log
            log.warning("event feed: publishing (%d, %d] failed: %s", batch.after, batch.upto, exc)
