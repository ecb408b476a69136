"""The app's one outer ASGI layer, around Litestar's handler (ADR 0030).

In one call, in this order:

1. the real client behind a trusted front proxy (``forwarded.py``: FORWARDED_ALLOW_IPS),
   written into the scope before anything reads it (HTTP and WebSocket);
2. the fast lane (``fast_lane.py``): the raw proxy and credits routes, answered here with
   only what they need (auth, rate limit, metrics and access log, rate-limit headers); the
   lane is asked only about paths under its prefixes (``LANE_PREFIXES``), so no other request
   runs its code;
3. everything else goes to Litestar through ``Observer.around``: metrics and the access log
   (unmatched 404/405 included), rate-limit headers, HEAD in a 405's ``Allow``, and HEAD served
   as GET where a route has only GET (``head.py``, asked only for HEAD requests).

Litestar itself keeps what is per route: the exception handlers (problem details, 503 with
Retry-After on store outages), CORS, compression (``compression.py``), the card-number guard
(``card_guard.py``) and conditional requests in the routes that answer them.
"""

from __future__ import annotations

from litestar.types import ASGIApp, Receive, Scope, Send

from interfaces.http.fast_lane import CREDITS, PROXY, FastLane
from interfaces.http.forwarded import TrustedProxies
from interfaces.http.head import HeadRoutes
from interfaces.http.observability import Observer

LANE_PREFIXES = (PROXY, CREDITS)  # every path the fast lane may answer starts with one


class Front:
    """``Litestar.asgi_handler``: wraps the handler Litestar built (``inner``)."""

    def __init__(
        self,
        inner: ASGIApp,
        *,
        router: object,
        observer: Observer,
        lane: FastLane | None,
        proxies: TrustedProxies | None,
    ) -> None:
        self.inner = inner
        self.head = HeadRoutes(router)
        self.observer = observer
        self.lane = lane  # None: Litestar serves the fast lane's routes too
        self.proxies = proxies if proxies is not None and proxies.networks else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if self.proxies is not None and kind in {"http", "websocket"}:
            self._real_client(scope)
        if kind != "http":
            await self.inner(scope, receive, send)
            return
        if (
            self.lane is not None
            and scope["path"].startswith(LANE_PREFIXES)
            and (handler := self.lane.match(scope)) is not None
        ):
            await self.observer(handler, scope, receive, send)
            return
        method: str = scope["method"]  # type: ignore[typeddict-item]
        as_get = method == "HEAD" and self.head.served_as_get(scope)
        await self.observer.around(self.inner, scope, receive, send, as_get=as_get)

    def _real_client(self, scope: Scope) -> None:
        peer = scope.get("client")
        if peer and self.proxies is not None:
            host = self.proxies.client(str(peer[0]), scope["headers"])
            if host != peer[0]:
                scope["client"] = (host, 0)  # the port is the proxy's, not the client's
