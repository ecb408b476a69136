"""One WebSocket connection: its principal, subscription and bounded outgoing queue.

Everything sent goes through one queue drained by one task, so messages keep their order.
Live events are *offered* (never waited for): a full queue means the client reads slower than
events arrive, and the connection is closed with 4008 instead of buffering without bound.
Replays, replies and inference chunks *wait* for room instead (the client sets the pace).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from infrastructure.identity.auth import Principal
from interfaces.ws.protocol import CLOSE_NORMAL, CLOSE_SLOW_CONSUMER
from interfaces.ws.topics import Subscription, dumps


class Session:
    def __init__(
        self,
        socket: Any,
        principal: Principal,
        credentials: tuple[str | None, str | None],
        *,
        address: str = "",
        queue_size: int,
    ) -> None:
        self.socket = socket
        self.principal = principal
        self.credentials = credentials  # (api key, authorization) to re-check now and then
        self.address = address  # the client's, for the failed-attempt limits on re-checks
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        self.sub: Subscription | None = None
        self.live = False
        self.position = 0  # every event up to here that this client may see was queued
        self.last_heard = time.monotonic()
        self.replay: asyncio.Task[None] | None = None
        self.inferences: dict[str, asyncio.Task[None]] = {}
        self.closing = asyncio.Event()
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""

    @property
    def user_id(self) -> str:
        return self.principal.user_id

    # ------------------------------------------------------------ sending

    def offer(self, text: str) -> bool:
        """Queue a live message; a full queue closes the connection as a slow consumer."""
        if self.closing.is_set():
            return False
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.close(
                CLOSE_SLOW_CONSUMER,
                f"slow consumer: {self.queue.maxsize} messages waiting; reconnect with since",
            )
            return False
        return True

    async def put(self, text: str) -> None:
        """Queue a message, waiting while the queue is full."""
        if not self.closing.is_set():
            await self.queue.put(text)

    async def send(self, message: dict[str, Any]) -> None:
        await self.put(dumps(message))

    async def wait_room(self) -> None:
        """Wait until the queue is at most half full (room for a burst of live events)."""
        while self.queue.qsize() > self.queue.maxsize // 2 and not self.closing.is_set():
            await asyncio.sleep(0.01)

    async def pump(self) -> None:
        """Send queued messages in order until the connection closes."""
        while True:
            text = await self.queue.get()
            await self.socket.send_text(text)

    # ------------------------------------------------------------ lifecycle

    def close(self, code: int, reason: str) -> None:
        if not self.closing.is_set():
            self.close_code, self.close_reason = code, reason[:120]
            self.closing.set()

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def stop_tasks(self) -> list[asyncio.Task[None]]:
        tasks = [t for t in (self.replay, *self.inferences.values()) if t is not None]
        for task in tasks:
            task.cancel()
        self.inferences.clear()
        self.replay = None
        return tasks
