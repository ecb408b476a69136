"""The process's stream service: the event feed, its subscribers, and the ``/ws`` route."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from litestar import WebSocket, websocket
from litestar.di import NamedDependency

from domain.errors import DomainError
from infrastructure.feed.bus import MemoryBus, RedisBus, feed_namespace
from infrastructure.feed.feed import Bus, EventFeed
from interfaces.http.security import client_address
from interfaces.ws import protocol
from interfaces.ws.connection import (
    BEARER,
    Connection,
    authenticate,
    credentials_of,
    offered_protocols,
    refuse,
)
from interfaces.ws.hub import StreamHub
from interfaces.ws.session import Session

if TYPE_CHECKING:
    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container


class Streams:
    """Owns the feed (started with the app) and serves each ``/ws`` connection."""

    def __init__(self, container: Container, runtime: ProxyRuntime) -> None:
        settings = container.settings
        self.c = container
        self.runtime = runtime
        self.bus: Bus = (
            RedisBus(settings.redis.url, feed_namespace(settings))
            if settings.redis.url
            else MemoryBus()
        )
        self.feed = EventFeed(
            container.events, self.bus, poll_interval=settings.streams.poll_interval
        )
        self.hub = StreamHub(container, self.feed)

    async def run_forever(self) -> None:
        await self.feed.run_forever()

    async def aclose(self) -> None:
        self.hub.close_all(protocol.CLOSE_GOING_AWAY, "server shutting down")
        await self.bus.aclose()

    async def handle(self, socket: WebSocket[Any, Any, Any]) -> None:
        try:
            creds = credentials_of(socket)
            address = client_address(socket.scope)
            principal = await asyncio.to_thread(authenticate, self.c, creds, address)
        except DomainError as exc:
            await refuse(socket, exc)
            return
        await socket.accept(subprotocols=BEARER if BEARER in offered_protocols(socket) else None)
        session = Session(
            socket, principal, creds, address=address, queue_size=self.c.settings.streams.queue_size
        )
        await Connection(self.c, self.hub, self.runtime, session).serve()


@websocket("/ws", name="streams")
async def streams_socket(
    socket: WebSocket[Any, Any, Any], streams: NamedDependency[Streams]
) -> None:
    """Subscribe to your ledger events and stream inference (docs/adr/0014)."""
    await streams.handle(socket)
