"""Dynamic batching: concurrent requests for one model run as one stacked batch.

Requests queue per (model, outputs, trailing input shapes). A few workers per queue each take
the first waiting request, then whatever else is already waiting (up to ``max_rows`` rows, or
until ``wait_ms`` has passed when it is set), stack the inputs along axis 0, run once in the
thread pool and hand each request its slice. With ``wait_ms=0`` nothing waits on purpose:
batches form only while a run is already busy, so a lone request pays no delay.

Only models whose inputs and outputs all have a free first dimension are batched; anything
else (and any request larger than ``max_rows``) runs on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from domain.models import Signature
from infrastructure.models.tensors import Prepared

log = logging.getLogger(__name__)
Key = tuple[Any, ...]
IDLE_SECONDS = 5.0  # a queue's workers exit after this long without requests


@dataclass(frozen=True)
class BatchConfig:
    max_rows: int = 64
    wait_ms: float = 0.0
    workers: int = 2  # batches of one queue in flight at once


@dataclass
class _Item:
    prepared: Prepared
    future: asyncio.Future[list[Any]]


@dataclass
class _Queue:
    session: Any
    names: tuple[str, ...]
    queue: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)


class Batcher:
    def __init__(
        self, config: BatchConfig, run: Callable[[Any, Sequence[str], dict[str, Any]], list[Any]]
    ) -> None:
        self.config = config
        self._run = run
        self._queues: dict[Key, _Queue] = {}
        self._totals: dict[str, tuple[int, int]] = {}  # model id -> (batches, rows) run

    @staticmethod
    def can_batch(signature: Signature, prepared: Prepared) -> bool:
        free = all(s.shape and s.shape[0] == -1 for s in (*signature.inputs, *signature.outputs))
        return free and all(a.ndim >= 1 for a in prepared.feeds.values())

    def stats(self) -> dict[str, tuple[int, int]]:
        """Per model: (batches run, rows run) since start — for tests and benchmarks."""
        return dict(self._totals)

    async def submit(
        self, session: Any, names: tuple[str, ...], prepared: Prepared, executor: Executor
    ) -> list[Any]:
        if prepared.rows > self.config.max_rows:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, self._run, session, names, prepared.feeds)
        shapes = tuple((k, v.shape[1:], v.dtype.str) for k, v in sorted(prepared.feeds.items()))
        key = (session.model_id, names, shapes)
        loop = asyncio.get_running_loop()
        queue = self._queues.get(key)
        if queue is None or queue.session is not session:
            queue = self._queues[key] = _Queue(session, names)
        item = _Item(prepared, loop.create_future())
        queue.queue.put_nowait(item)
        while len(queue.workers) < self.config.workers:
            queue.workers.append(loop.create_task(self._work(key, queue, executor)))
        return await item.future

    async def _collect(self, queue: _Queue) -> list[_Item]:
        try:
            first = await asyncio.wait_for(queue.queue.get(), IDLE_SECONDS)
        except TimeoutError:
            return []
        items = [first]
        rows = items[0].prepared.rows
        deadline = time.monotonic() + self.config.wait_ms / 1000
        while rows < self.config.max_rows:
            try:
                item = queue.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.queue.get(), remaining)
                except TimeoutError:
                    break
            if rows + item.prepared.rows > self.config.max_rows:
                queue.queue.put_nowait(item)  # next batch starts with it
                break
            items.append(item)
            rows += item.prepared.rows
        return items

    async def _work(self, key: Key, queue: _Queue, executor: Executor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect(queue)
            if not items:  # idle: leave (submit starts workers again when needed)
                queue.workers.remove(asyncio.current_task())  # type: ignore[arg-type]
                if not queue.workers and self._queues.get(key) is queue:
                    del self._queues[key]
                return
            live = [i for i in items if not i.future.done()]
            if not live:
                continue
            feeds = {
                name: np.concatenate([i.prepared.feeds[name] for i in live])
                if len(live) > 1
                else live[0].prepared.feeds[name]
                for name in live[0].prepared.feeds
            }
            try:
                values = await loop.run_in_executor(
                    executor, self._run, queue.session, queue.names, feeds
                )
            except Exception as exc:
                for item in live:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            batches, rows = self._totals.get(queue.session.model_id, (0, 0))
            rows += sum(i.prepared.rows for i in live)
            self._totals[queue.session.model_id] = (batches + 1, rows)
            self._hand_out(live, values)

    @staticmethod
    def _hand_out(items: list[_Item], values: list[Any]) -> None:
        total = sum(i.prepared.rows for i in items)
        if any(getattr(v, "ndim", 0) < 1 or v.shape[0] != total for v in values):
            error = RuntimeError("batched outputs do not follow the batch axis")
            for item in items:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        offset = 0
        for item in items:
            rows = item.prepared.rows
            if not item.future.done():
                item.future.set_result([v[offset : offset + rows] for v in values])
            offset += rows

    def forget(self, model_id: str) -> None:
        """New requests get a new queue; the old one's workers finish what waits, then leave."""
        for key in [k for k in self._queues if k[0] == model_id]:
            del self._queues[key]

    async def aclose(self) -> None:
        queues = list(self._queues.values())
        self._queues.clear()
        tasks = [t for q in queues for t in q.workers]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        for queue in queues:
            while not queue.queue.empty():
                item = queue.queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("model serving is shutting down"))
