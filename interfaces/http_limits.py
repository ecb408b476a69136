"""Connection limits for the HTTP server: header-read deadline, keep-alive, connection cap.

(The same protocol also writes each response's head with its body: ``http_writes.py``.)

uvicorn bounds idle keep-alive (``timeout_keep_alive``) but sets no deadline on reading a
request's headers, and ``limit_concurrency`` is only checked once headers are complete, so
half-sent requests each hold a socket for ever. ``BoundedHttpProtocol`` adds both: a timer
from the connection's start (or a later request's first byte) to the end of its headers
(408 and close when it fires), and a 503 for any connection past the cap, sent at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from interfaces.http_writes import CoalescingCycle, CoalescingTransport

if TYPE_CHECKING:
    from infrastructure.settings import Settings


def _problem(status: int, reason: str, detail: str) -> bytes:
    body = json.dumps(
        {
            "type": "about:blank",
            "title": reason,
            "status": status,
            "detail": detail,
            "error": detail,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


TOO_MANY = _problem(503, "Service Unavailable", "too many open connections; retry shortly")
TOO_SLOW = _problem(408, "Request Timeout", "request headers were not received in time")


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a connection cap."""

    header_timeout: float = 10.0
    max_connections: int = 1000
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.connections.discard(self)
            transport.write(TOO_MANY)
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a keep-alive connection's next request
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # a new request (not an upgrade)
            # head and first body bytes in one write (interfaces/http_writes.py); the ASGI
            # task that runs the cycle has not started yet
            cycle.__class__ = CoalescingCycle
            cycle.transport = CoalescingTransport(self.transport)  # type: ignore[assignment]

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # no response half-written
            self.transport.write(TOO_SLOW)
        self.transport.close()


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` that apply the HTTP_* connection settings."""
    protocol = type(
        "BoundedHttpProtocol",
        (BoundedHttpProtocol,),
        {
            "header_timeout": settings.http.header_timeout,
            "max_connections": settings.http.max_connections,
        },
    )
    return {
        "http": protocol,
        "timeout_keep_alive": settings.http.keepalive_seconds,
        # uvicorn's own check counts the asking connection too; ours refuses past the cap
        # first, so this one only bounds running tasks (one per connection, WebSockets too).
        "limit_concurrency": settings.http.max_connections + 1,
    }
