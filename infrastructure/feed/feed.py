"""The live event feed: the event log, tailed once per deployment, handed to each process in order.

- ``EventFeed`` (one per process) keeps a ``cursor``: every event at or below it has been given
  to the sink exactly once, oldest first. It is fed ``FeedBatch``es that say which range of the
  log they cover, ``(after, upto]``; a range it does not have yet is read from the log itself
  and anything at or below the cursor is dropped, so a lost, late or repeated batch never
  leaves a gap or a duplicate.
- ``LogTailer`` reads new events from the log every poll interval and publishes them as
  batches, with an empty heartbeat batch now and then. One process tails (the bus decides
  which, ``infrastructure.feed.bus``); its batches reach every process.
- Watchdog: a feed that has heard nothing, not even a heartbeat, for ``stale_after`` seconds
  reads the log itself, so a Redis outage or a tailer failing over only slows it down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import msgspec

from infrastructure.eventstore.event_log import EventLog
from projections.base import Recorded

log = logging.getLogger(__name__)
Sink = Callable[[Sequence[Recorded]], Awaitable[None]]


@dataclass(frozen=True)
class FeedBatch:
    """The events of the log in ``(after, upto]`` (all of them; none left out)."""

    after: int
    upto: int
    events: tuple[Recorded, ...] = ()


def encode_batch(batch: FeedBatch) -> bytes:
    return msgspec.json.encode(
        {
            "after": batch.after,
            "upto": batch.upto,
            "events": [
                [e.position, str(e.originator_id), e.version, e.name, e.data] for e in batch.events
            ],
        }
    )


def decode_batch(raw: bytes | str) -> FeedBatch:
    """A batch from its wire form; raises ``ValueError`` on anything malformed."""
    try:
        body: Any = msgspec.json.decode(raw)
        events = tuple(
            Recorded(position=int(p), originator_id=UUID(o), version=int(v), name=n, data=d)
            for p, o, v, n, d in body["events"]
        )
        return FeedBatch(int(body["after"]), int(body["upto"]), events)
    except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed feed batch: {exc}") from None


class Bus(Protocol):
    """Carries batches from the one tailing process to every process's feed."""

    async def run(self, feed: EventFeed) -> None: ...

    async def aclose(self) -> None: ...


class EventFeed:
    """This process's ordered, gap-free view of the log's tail; see the module docstring."""

    def __init__(
        self,
        events: EventLog,
        bus: Bus,
        *,
        poll_interval: float = 0.2,
        page: int = 500,
        stale_after: float = 3.0,
        inbox: int = 64,
    ) -> None:
        self.events = events
        self.bus = bus
        self.poll_interval = poll_interval
        self.page = page
        self.stale_after = stale_after
        self.cursor = 0
        self.sink: Sink | None = None
        self.started = asyncio.Event()
        self._inbox: asyncio.Queue[FeedBatch] = asyncio.Queue(maxsize=inbox)

    def tailer(self, start: int) -> LogTailer:
        return LogTailer(self.events, start, poll_interval=self.poll_interval, page=self.page)

    # ------------------------------------------------------------ intake

    def offer(self, batch: FeedBatch) -> None:
        """Take a batch if there is room; dropping one is safe (the gap is read from the log)."""
        try:
            self._inbox.put_nowait(batch)
        except asyncio.QueueFull:
            log.debug("feed inbox full; batch (%d, %d] dropped", batch.after, batch.upto)

    async def put(self, batch: FeedBatch) -> None:
        """Take a batch, waiting for room (in-process publishers slow down instead)."""
        await self._inbox.put(batch)

    # ------------------------------------------------------------ loop

    async def run_forever(self) -> None:
        self.cursor = await asyncio.to_thread(self.events.head)
        self.started.set()
        bus = asyncio.create_task(self.bus.run(self))
        try:
            while True:
                try:
                    batch = await asyncio.wait_for(self._inbox.get(), self.stale_after)
                except TimeoutError:
                    await self._guarded(self._read_log(None))
                    continue
                await self._guarded(self._apply(batch))
        finally:
            bus.cancel()
            await asyncio.gather(bus, return_exceptions=True)

    async def _guarded(self, step: Awaitable[None]) -> None:
        try:
            await step
        except asyncio.CancelledError:
            raise
        except Exception:  # a database hiccup: keep the cursor, try again on the next batch
            log.exception("event feed step failed at position %d", self.cursor)
            await asyncio.sleep(min(1.0, self.stale_after))

    async def _apply(self, batch: FeedBatch) -> None:
        if batch.upto <= self.cursor:
            return
        if batch.after > self.cursor:
            await self._read_log(batch.after)
        fresh = [e for e in batch.events if e.position > self.cursor]
        if fresh:
            await self._deliver(fresh)
        self.cursor = max(self.cursor, batch.upto)

    async def _read_log(self, upto: int | None) -> None:
        """Read the log from the cursor to ``upto`` (or to its end) and deliver it."""
        while upto is None or self.cursor < upto:
            events = await asyncio.to_thread(self.events.read, self.cursor, self.page, upto)
            if not events:
                if upto is not None:
                    self.cursor = upto
                return
            await self._deliver(events)
            self.cursor = events[-1].position
            if upto is None and len(events) < self.page:
                return

    async def _deliver(self, events: Sequence[Recorded]) -> None:
        if self.sink is not None:
            await self.sink(events)


class LogTailer:
    """Reads the log's new events and publishes them; an empty heartbeat every second."""

    def __init__(
        self,
        events: EventLog,
        start: int,
        *,
        poll_interval: float,
        page: int = 500,
        heartbeat: float = 1.0,
    ) -> None:
        self.events = events
        self.cursor = start
        self.poll_interval = poll_interval
        self.page = page
        self.heartbeat = heartbeat

    async def run(self, publish: Callable[[FeedBatch], Awaitable[None]]) -> None:
        beat = 0.0
        while True:
            try:
                events = await asyncio.to_thread(self.events.read, self.cursor, self.page)
            except Exception:
                log.exception("event feed: reading the log failed; retrying")
                await asyncio.sleep(1.0)
                continue
            if events:
                batch = FeedBatch(self.cursor, events[-1].position, tuple(events))
                self.cursor = batch.upto
                await publish(batch)
                beat = time.monotonic()
                if len(events) == self.page:
                    continue
            elif time.monotonic() - beat >= self.heartbeat:
                await publish(FeedBatch(self.cursor, self.cursor))
                beat = time.monotonic()
            await asyncio.sleep(self.poll_interval)
