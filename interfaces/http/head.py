"""HEAD on every GET route (RFC 9110 §9.3.2): the GET is served, its body is not sent.

Litestar answers HEAD only where a handler declares it, so this ASGI wrapper goes around the
app's handler, under the fast lane (which answers HEAD on its credits route itself and passes
HEAD to the proxy's upstream): a HEAD whose path has no HEAD handler of its own but has a GET
one is run as that GET, with authentication, rate limits, metrics, compression and
conditional requests applied as for the GET, so the status and every header (``Content-Length``,
``ETag``, ``Content-Encoding``…) are the GET's. Only the body is dropped. Routes that declare
HEAD themselves (the proxy, which forwards it upstream) are left alone, as are paths no route
takes (the router answers 404 as for any method).
"""

from __future__ import annotations

from litestar.exceptions import MethodNotAllowedException, NotFoundException
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from litestar.utils import normalize_path

from interfaces.http.observability import HEAD_AS_GET


def head_as_get(app: ASGIApp, routes: object) -> ASGIApp:
    """Wrap ``app`` (``Litestar.asgi_handler``); ``routes`` is ``Litestar.asgi_router``."""
    handle_routing = routes.handle_routing  # type: ignore[attr-defined]

    def served_as_get(path: str) -> bool:
        try:
            handle_routing(path=path, method="HEAD")
        except MethodNotAllowedException:
            pass
        except NotFoundException:
            return False
        else:
            return False  # the route has a HEAD handler of its own
        try:
            handle_routing(path=path, method="GET")
        except (MethodNotAllowedException, NotFoundException):
            return False
        return True

    async def wrapper(scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"  # type: ignore[comparison-overlap]
            or scope["method"] != "HEAD"  # type: ignore[typeddict-item]
            or not served_as_get(normalize_path(scope["path"]))
        ):
            await app(scope, receive, send)
            return
        scope["method"] = "GET"  # type: ignore[typeddict-unknown-key]
        scope[HEAD_AS_GET] = True  # type: ignore[literal-required]
        ended = False

        async def send_headers_only(message: Message) -> None:
            nonlocal ended
            if message["type"] != "http.response.body":
                await send(message)
            elif not ended:  # one empty, final body message however the GET streams
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await app(scope, receive, send_headers_only)

    return wrapper
