"""A response's head and its first body bytes in one socket write.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start``
and the body in a second ``transport.write``: two ``send`` system calls, and two TCP segments
for the client to wake up for, on every response. Here the head is held back until the
response's first body message, and both go out in one write; if no body message comes in the
same event-loop tick (a stream whose first chunk is not ready yet), the head goes out on its
own on the next tick, so nothing waits on the app. Order and bytes on the wire are unchanged.

``CoalescingCycle`` is uvicorn's ``RequestResponseCycle`` with that ``send``; the server's
protocol (``interfaces.http_limits.BoundedHttpProtocol``) gives each request's cycle a
``CoalescingTransport`` over the connection's transport (ADR 0030).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

JOIN_LIMIT = 16 * 1024  # bytes: below, head + body are joined; above, handed over as a list


class CoalescingTransport:
    """A connection's transport whose next write can be held until the write after it."""

    __slots__ = ("_held", "_loop", "_timer", "hold_next", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop  # the connection's (no get_running_loop per response)
        self.hold_next = False  # set around the head's write (``CoalescingCycle.send``)
        self._held: bytes | None = None
        self._timer: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        if self.hold_next:
            self.hold_next = False
            self._held = data
            self._timer = self._loop.call_soon(self.flush)
            return
        held = self._held
        if held is None:
            self.transport.write(data)
            return
        self._release()
        if len(data) < JOIN_LIMIT:
            self.transport.write(held + data)
        else:  # no copy of a large body (uvloop sends the pieces in one writev)
            self.transport.writelines((held, data))

    def flush(self) -> None:
        """Write whatever is held (the next tick's callback, or the response's end)."""
        held = self._held
        if held is not None:
            self._release()
            self.transport.write(held)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def _release(self) -> None:
        self._held = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __getattr__(self, name: str) -> Any:  # is_closing, pause_reading, get_extra_info…
        return getattr(self.transport, name)


class CoalescingCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing through a ``CoalescingTransport``."""

    transport: CoalescingTransport  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        transport = self.transport
        if message["type"] == "http.response.start":
            transport.hold_next = True
            try:
                await super().send(message)
            finally:
                transport.hold_next = False  # not written (disconnected, bad header): nothing held
        else:
            await super().send(message)
            transport.flush()  # a HEAD or an empty body wrote nothing: the head goes now
