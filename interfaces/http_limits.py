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
    """uvicorn's httptools protocol with a header deadline and a connection cap.

    Neither deadline, the header read's nor the idle keep-alive's (uvicorn's own, which it
    arms with a fresh timer after every response), costs a timer per request: a connection
    keeps at most one timer, armed when a phase starts and none is pending sooner. When it
    fires it acts on the phase under way then: closes the connection if that phase
    (``_header_since`` or ``_idle_since``) is past its deadline, re-arms for the rest if a
    later phase is under way, and lapses if none is (a request being served).
    """

    header_timeout: float = 10.0
    max_connections: int = 1000
    _timer: asyncio.TimerHandle | asyncio.Handle | None = None
    _timer_at: float = 0.0
    _header_since: float | None = None  # loop time the pending request's headers began
    _idle_since: float | None = None  # loop time the connection went idle (keep-alive)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self.connections.discard(self)
            transport.write(TOO_MANY)
            transport.close()
            return
        self._header_phase()

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_since = self._idle_since = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_since is None:  # a keep-alive connection's next request
            self._header_phase()

    def on_headers_complete(self) -> None:
        self._header_since = None  # the timer, if pending, lapses when it fires
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # a new request (not an upgrade)
            # head and first body bytes in one write (interfaces/http_writes.py); the ASGI
            # task that runs the cycle has not started yet
            cycle.__class__ = CoalescingCycle
            cycle.transport = CoalescingTransport(self.transport, self.loop)  # type: ignore[assignment]

    def _unset_keepalive_if_required(self) -> None:
        self._idle_since = None  # bytes came in (or the connection ends): not idle
        if self.timeout_keep_alive_task is not None:  # uvicorn's own, never armed by us
            super()._unset_keepalive_if_required()

    def on_response_complete(self) -> None:
        """uvicorn's, with the idle keep-alive deadline on the connection's one timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:  # a pipelined request waits: start it
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            since = self._idle_since = self.loop.time()
            self._arm(since + self.timeout_keep_alive)

    def _header_phase(self) -> None:
        since = self._header_since = self.loop.time()
        self._arm(since + self.header_timeout)

    def _arm(self, at: float) -> None:
        if self._timer is None or self._timer_at > at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = at
            self._timer = self.loop.call_at(at, self._check)

    def _check(self) -> None:
        self._timer = None
        now = self.loop.time()
        if self._header_since is not None:
            deadline = self._header_since + self.header_timeout
            if deadline <= now:
                self._headers_too_slow()
                return
        elif self._idle_since is not None:
            deadline = self._idle_since + self.timeout_keep_alive
            if deadline <= now:
                self._idle_since = None
                self.timeout_keep_alive_handler()
                return
        else:  # a request is being served: its end arms the idle deadline
            return
        self._arm(deadline)  # a later phase: its own deadline

    def _headers_too_slow(self) -> None:
        self._header_since = None
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
