"""One ``/ws`` connection from handshake to close: authenticate, then read, dispatch, keep alive.

Authentication happens at the handshake, before the connection is accepted: ``X-API-Key`` or
``Authorization: Bearer`` headers, or (browsers cannot set headers) the subprotocols
``["bearer", "<JWT or API key>"]`` in ``Sec-WebSocket-Protocol``, answered with ``bearer``.
Credentials in the URL (``?token=``, ``?api_key=``) are refused with 400: URLs end up in
logs. A refused handshake is answered with an HTTP 400/401/429 problem body where the server
supports it, otherwise with 403. Every connection counts once against
the rate limit, and each ``infer`` message once more. The credential is checked again every
minute: a revoked key or ended session closes the connection with 4401.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from litestar.exceptions import WebSocketDisconnect

from domain.errors import DomainError
from infrastructure.identity.auth import Principal
from infrastructure.proxy.runtime import ProxyRuntime
from interfaces.http.errors import RateLimitedError, problem_body
from interfaces.ws import protocol
from interfaces.ws.hub import StreamHub
from interfaces.ws.infer import MAX_IN_FLIGHT, run_infer
from interfaces.ws.protocol import BadMessageError
from interfaces.ws.session import Session
from interfaces.ws.topics import TOPICS, Subscription, dumps

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger(__name__)
REAUTH_EVERY = 60.0
_refs = itertools.count(1)


BEARER = "bearer"  # the subprotocol that carries a credential (and is selected on accept)
URL_CREDENTIALS = ("token", "api_key", "access_token", "key")


def offered_protocols(socket: Any) -> list[str]:
    """The client's ``Sec-WebSocket-Protocol`` values, in order."""
    offered: list[str] = socket.scope.get("subprotocols") or []
    return offered


def credentials_of(socket: Any) -> tuple[str | None, str | None]:
    """``(api key, authorization)`` from the headers or the ``bearer`` subprotocol."""
    for name in URL_CREDENTIALS:
        if name in socket.query_params:
            raise DomainError(
                f"{name}: credentials in the URL are not accepted (they end up in logs); send "
                'them as WebSocket subprotocols ["bearer", "<JWT or API key>"] or in a header',
                field=name,
            )
    headers = socket.headers
    api_key = headers.get("x-api-key") or None
    authorization = headers.get("authorization") or None
    offered = offered_protocols(socket)
    if not api_key and not authorization and BEARER in offered:
        at = offered.index(BEARER)
        if at + 1 < len(offered):
            authorization = f"Bearer {offered[at + 1]}"
    return api_key, authorization


def authenticate(c: Container, creds: tuple[str | None, str | None], address: str) -> Principal:
    """The handshake's caller; ``address`` counts failed API-key attempts as every door does."""
    principal = c.auth.authenticate(*creds, address)
    decision = c.limiter.hit(principal.user_id)
    if not decision.allowed:
        raise RateLimitedError(decision)
    return principal


async def refuse(socket: Any, exc: DomainError) -> None:
    """Answer the handshake with an HTTP error instead of accepting the connection."""
    await socket.receive()  # websocket.connect
    if "websocket.http.response" not in socket.scope.get("extensions", {}):
        await socket.close(code=protocol.CLOSE_UNAUTHORIZED, reason=exc.title)
        return
    body = json.dumps(
        problem_body(
            exc.status,
            exc.title,
            exc.message,
            **{k: v for k, v in exc.details.items() if k == "field"},
        )
    ).encode()
    headers = [(b"content-type", b"application/problem+json")]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await socket.send(
        {"type": "websocket.http.response.start", "status": exc.status, "headers": headers}
    )
    await socket.send({"type": "websocket.http.response.body", "body": body, "more_body": False})


class Connection:
    """Serves one accepted socket for its principal."""

    def __init__(self, c: Container, hub: StreamHub, runtime: ProxyRuntime, session: Session):
        self.c, self.hub, self.runtime, self.session = c, hub, runtime, session

    async def serve(self) -> None:
        session = self.session
        self.hub.add(session)
        tasks = [
            asyncio.create_task(session.pump()),
            asyncio.create_task(self._read()),
            asyncio.create_task(self._keep_alive()),
            asyncio.create_task(session.closing.wait()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = task.exception()
                if failure is not None and not isinstance(failure, WebSocketDisconnect | OSError):
                    log.error("ws session of %s failed", session.user_id, exc_info=failure)
                    session.close(protocol.CLOSE_INTERNAL, "internal error")
        finally:
            self.hub.remove(session)
            running = [*tasks, *session.stop_tasks()]
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            if session.closing.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        session.socket.close(session.close_code, session.close_reason), 5
                    )

    # ------------------------------------------------------------ reading

    async def _read(self) -> None:
        socket, session = self.session.socket, self.session
        while True:
            message = await socket.receive()
            if message["type"] == "websocket.disconnect":
                return
            session.heard()
            frame = message.get("text")
            if frame is None:
                await self._error("bad_message", "send JSON text frames, not binary", None)
                continue
            try:
                decoded = protocol.decode(frame)
            except BadMessageError as exc:
                await self._error("bad_message", str(exc), protocol.reference(frame))
                continue
            await self._handle(decoded)

    async def _handle(self, msg: protocol.Message) -> None:
        session = self.session
        if isinstance(msg, protocol.Subscribe):
            await self._subscribe(msg)
        elif isinstance(msg, protocol.Unsubscribe):
            self.hub.unsubscribe(session)
            await session.send({"type": "unsubscribed", "id": msg.id})
        elif isinstance(msg, protocol.Ping):
            await session.send({"type": "pong", "id": msg.id, "position": session.position})
        elif isinstance(msg, protocol.Infer):
            await self._infer(msg)
        elif isinstance(msg, protocol.Cancel):
            task = session.inferences.pop(msg.id, None)
            if task is None:
                await self._error("not_found", "no inference with this id is running", msg.id)
            else:
                task.cancel()
                await session.send({"type": "infer.cancelled", "id": msg.id})
        # Pong: being heard is all it does

    async def _subscribe(self, msg: protocol.Subscribe) -> None:
        session = self.session
        topics = frozenset(msg.topics if msg.topics is not None else TOPICS)
        unknown = sorted(topics - set(TOPICS))
        problem: tuple[str, str] | None = None
        if unknown or not topics:
            problem = ("bad_message", f"topics must be some of {', '.join(TOPICS)}")
        user_id: str | None = msg.user_id or session.user_id
        if msg.all:
            user_id = None
        if (user_id is None or user_id != session.user_id) and not session.principal.is_admin:
            problem = ("forbidden", "only admins may subscribe to other users' events")
        if problem is not None:
            await self._error(problem[0], problem[1], msg.id)
            return
        self.hub.subscribe(session, Subscription(topics, user_id, msg.since), msg.id)

    async def _infer(self, msg: protocol.Infer) -> None:
        session = self.session
        if len(session.inferences) >= MAX_IN_FLIGHT:
            await self._error("busy", f"at most {MAX_IN_FLIGHT} inferences at once", msg.id)
            return
        ref = msg.id or f"infer-{next(_refs)}"
        if ref in session.inferences:
            await self._error("bad_message", "an inference with this id is running", ref)
            return
        session.inferences[ref] = asyncio.create_task(
            run_infer(self.c, self.runtime, session, msg, ref)
        )

    async def _error(self, code: str, text: str, ref: str | None) -> None:
        await self.session.put(_error(code, text, ref))

    # ------------------------------------------------------------ keep-alive

    async def _keep_alive(self) -> None:
        """Ping every interval; close a silent client; re-check the credential each minute."""
        session, settings = self.session, self.c.settings
        checked = time.monotonic()
        while True:
            await asyncio.sleep(settings.streams.ping_interval)
            if time.monotonic() - session.last_heard > settings.streams.ping_timeout:
                session.close(protocol.CLOSE_PING_TIMEOUT, "ping timeout: nothing heard")
                return
            session.offer(_ping(session.position))
            if time.monotonic() - checked >= REAUTH_EVERY:
                checked = time.monotonic()
                await self._recheck()

    async def _recheck(self) -> None:
        session = self.session
        try:
            principal = await asyncio.to_thread(
                self.c.auth.authenticate, *session.credentials, session.address
            )
        except DomainError as exc:
            session.close(protocol.CLOSE_UNAUTHORIZED, f"credential no longer valid: {exc.message}")
            return
        session.principal = principal
        sub = session.sub
        if sub is not None and sub.user_id != principal.user_id and not principal.is_admin:
            session.close(protocol.CLOSE_FORBIDDEN, "admin role revoked")


def _ping(position: int) -> str:
    return dumps({"type": "ping", "position": position})


def _error(code: str, text: str, ref: str | None) -> str:
    return dumps({"type": "error", "code": code, "error": text, "id": ref})
