"""The fast lane: the hottest routes answered before Litestar's routing and per-request objects.

``GET /api/v1/billing/credits`` (and ``HEAD``: the same status and headers, no body) and the
raw reverse proxy (``/api/v1/gpu/proxy/pool/…`` and
``/api/v1/gpu/proxy/{instance_id}/…``) are matched on the raw ASGI scope and served with the
same functions their Litestar routes use: authentication and the rate limit
(``principal_for``), the balance query and ``credits_json``, ``raw_proxy``. Errors go through
the app's own exception handlers, so every answer has the one problem-details shape, and the
``Observer`` records metrics, the access log line and the rate-limit headers as for any route.
Everything else, and CORS requests when CORS is configured, goes on to Litestar, which still
declares these routes for the OpenAPI schema (ADR 0017).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
from litestar import Request
from litestar.types import ASGIApp, Receive, Scope, Send

from infrastructure.proxy.runtime import ProxyRuntime
from interfaces.http import raw_proxy
from interfaces.http.observability import Observer
from interfaces.http.security import principal_for, read
from interfaces.presenters.credits import credits_json

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

CREDITS = "/api/v1/billing/credits"
PROXY = "/api/v1/gpu/proxy/"
POOL = "pool"
# the templates Litestar reports for the same routes, so metrics do not depend on the door
POOL_TEMPLATES = ("/api/v1/gpu/proxy/pool", "/api/v1/gpu/proxy/pool/{path}")
INSTANCE_TEMPLATES = ("/api/v1/gpu/proxy/{instance_id}", "/api/v1/gpu/proxy/{instance_id}/{path}")
GET_OR_HEAD = frozenset({"GET", "HEAD"})  # HEAD: the GET's status and headers, no body
PROXY_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
JSON_HEADERS = [(b"content-type", b"application/json")]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
_encode = msgspec.json.Encoder().encode


def _credits_body(row: dict[str, int] | None) -> bytes:
    return _credits_bytes(None if row is None else tuple(row.items()))


@lru_cache(maxsize=8_192)
def _credits_bytes(row: tuple[tuple[str, int], ...] | None) -> bytes:
    """The JSON answer for one balance row (rows repeat: an account polled, unchanged)."""
    return _encode(credits_json(None if row is None else dict(row)))


class FastLane:
    """The lane's routes (``match``); also an ASGI wrapper around ``inner`` on its own (the
    app calls ``match`` from its one outer layer, ``front.Front``)."""

    def __init__(
        self,
        inner: ASGIApp,
        *,
        container: Container,
        runtime: ProxyRuntime,
        observer: Observer,
        exception_handlers: Mapping[Any, Any],
        cors: bool,
    ) -> None:
        self.inner = inner
        self.container = container
        self.runtime = runtime
        self.observer = observer
        self.handlers = exception_handlers
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.match(scope) if scope["type"] == "http" else None  # type: ignore[comparison-overlap]
        if handler is None:
            await self.inner(scope, receive, send)
        else:
            await self.observer(handler, scope, receive, send)

    def match(self, scope: Scope) -> Handler | None:
        """The handler for an HTTP request this lane answers, else None (for Litestar)."""
        path: str = scope["path"]
        method: str = scope["method"]  # type: ignore[typeddict-item]
        if path == CREDITS:
            if method not in GET_OR_HEAD or self._cross_origin(scope):
                return None
            scope["path_template"] = CREDITS
            return self._credits
        if not path.startswith(PROXY) or method not in PROXY_METHODS or self._cross_origin(scope):
            return None
        first, slash, rest = path[len(PROXY) :].partition("/")
        if first == POOL:
            instance_id: str | None = None
            template = POOL_TEMPLATES[bool(slash)]
        else:
            try:
                instance_id = str(UUID(first))
            except ValueError:
                return None  # Litestar answers it (404)
            template = INSTANCE_TEMPLATES[bool(slash)]
        scope["path_template"] = template

        async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
            await self._proxy(scope, receive, send, instance_id, rest)

        return proxy

    def _cross_origin(self, scope: Scope) -> bool:
        return self.cors and any(name == b"origin" for name, _ in scope["headers"])

    async def _credits(self, scope: Scope, receive: Receive, send: Send) -> None:
        c = self.container
        try:
            api_key = authorization = None
            for name, value in scope["headers"]:
                if name == b"x-api-key":
                    api_key = api_key or value.decode("latin-1")
                elif name == b"authorization":
                    authorization = authorization or value.decode("latin-1")
            principal = await principal_for(c, scope, api_key, authorization)
            body = _credits_body(await read(c, c.queries.balance, principal.user_id))
        except Exception as exc:
            await self._fail(exc, scope, receive, send)
            return
        headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["method"] == "HEAD":  # type: ignore[typeddict-item]
            body = b""
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, instance_id: str | None, path: str
    ) -> None:
        try:
            upstream = await raw_proxy.open_upstream(
                self.container, self.runtime, scope, receive, instance_id, path
            )
        except Exception as exc:
            await self._fail(exc, scope, receive, send)
            return
        await raw_proxy.send_upstream(upstream, scope["method"], send)  # type: ignore[typeddict-item]

    async def _fail(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer with the app's exception handler for ``exc`` (nothing was sent yet)."""
        handler = next(
            (self.handlers[cls] for cls in type(exc).__mro__ if cls in self.handlers), None
        )
        if handler is None:
            raise exc
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        response = handler(request, exc)
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)
