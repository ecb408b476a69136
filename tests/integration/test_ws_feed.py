"""The event feed's range checks: lost, late, repeated and overlapping batches, and heartbeats
that reveal a gap, still hand every event to the sink exactly once and in order."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from infrastructure.feed.feed import EventFeed, FeedBatch, decode_batch, encode_batch
from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from projections.base import Recorded


class IdleBus:
    """Carries nothing: the test offers batches itself."""

    async def run(self, _feed: EventFeed) -> None:
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        return None


def test_feed_delivers_each_event_once_whatever_the_bus_does(tmp_path: Path) -> None:
    c = bootstrap(load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None))
    try:
        user = c.users.create("feed@example.com", "correct-horse-battery", "Feed")
        for i in range(12):
            c.ledger.grant(user.id, 1_000_000, key=f"g{i}", source="admin", reason="t", actor="t")
        log = c.events.read(0, 100)
        head = log[-1].position
        by_pos = {e.position: e for e in log}

        def batch(after: int, upto: int) -> FeedBatch:
            return FeedBatch(after, upto, tuple(by_pos[p] for p in range(after + 1, upto + 1)))

        async def scenario() -> list[int]:
            got: list[int] = []

            async def sink(events: Sequence[Recorded]) -> None:
                got.extend(e.position for e in events)

            feed = EventFeed(c.events, IdleBus(), poll_interval=0.05, stale_after=5)
            feed.sink = sink
            task = asyncio.create_task(feed.run_forever())
            await feed.started.wait()
            feed.cursor = 0  # as if it had started before the first event
            for item in [
                batch(0, 3),
                batch(0, 3),  # repeated
                batch(5, 7),  # (3, 5] was lost: read from the log
                batch(2, 6),  # late and overlapping
                FeedBatch(9, 9),  # heartbeat past a gap
                decode_batch(encode_batch(batch(9, head))),  # through the wire format
            ]:
                feed.offer(item)
            for _ in range(200):
                if feed.cursor >= head:
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return got

        assert asyncio.run(scenario()) == list(range(1, head + 1))
    finally:
        c.close()


def test_stale_feed_reads_the_log_itself(tmp_path: Path) -> None:
    c = bootstrap(load_settings({"DATA_DIR": str(tmp_path / "data")}, env_file=None))
    try:
        user = c.users.create("stale@example.com", "correct-horse-battery", "Stale")

        async def scenario() -> list[int]:
            got: list[int] = []

            async def sink(events: Sequence[Recorded]) -> None:
                got.extend(e.position for e in events)

            feed = EventFeed(c.events, IdleBus(), poll_interval=0.05, stale_after=0.2)
            feed.sink = sink
            task = asyncio.create_task(feed.run_forever())
            await feed.started.wait()
            start = feed.cursor
            await asyncio.to_thread(
                c.ledger.grant, user.id, 5, key="s", source="admin", reason="t", actor="t"
            )
            await asyncio.sleep(0.6)  # no bus message at all: the watchdog reads the log
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return [p for p in got if p > start]

        assert len(asyncio.run(scenario())) >= 1
    finally:
        c.close()
