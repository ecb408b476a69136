"""The raw reverse proxy on plain ASGI: request in from ``receive``, answer out through ``send``.

One implementation for both doors to ``/api/v1/gpu/proxy/{instance_id|pool}/{path}``: the
Litestar routes (``controllers/proxy.py``, which keep them in the OpenAPI schema) and the fast
lane (``fast_lane.py``, which answers them before Litestar's routing). No Request, Response or
Stream object: a streamed Litestar response costs a task group per request
(docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from litestar.exceptions import ClientException, HTTPException
from litestar.types import (
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)

from domain.errors import InvalidArgumentError
from infrastructure.proxy.runtime import ProxyRuntime, Upstream
from infrastructure.proxy.targets import TargetRefusedError
from interfaces import proxy_envelope
from interfaces.http.security import client_address, principal_for

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

BUFFER_LIMIT = 1_048_576  # request bodies up to this are buffered, so a retry can resend them
MAX_TIMELIMIT = proxy_envelope.MAX_TIMELIMIT
Pairs = Sequence[tuple[str, str]]


def header(pairs: Pairs, name: str) -> str | None:
    """The first value of a (lower-case) header, as Litestar's ``Headers.get`` gives it."""
    for key, value in pairs:
        if key == name:
            return value
    return None


def timelimit(raw: str | None, fallback: float | None = None) -> float | None:
    """``X-Timelimit`` in seconds (decimal), bounding the whole proxied request."""
    if raw is None or not raw.strip():
        return fallback
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMELIMIT):
        raise InvalidArgumentError(
            f"X-Timelimit must be seconds between 0 and {MAX_TIMELIMIT:.0f}", field="X-Timelimit"
        )
    return seconds


class RequestTooLarge(HTTPException):
    status_code = 413
    detail = "Request body too large"


class BodyStream:
    """The caller's body, chunk by chunk, within the size limit.

    A failure here is the caller's (too large, gone): it is kept in ``failure`` so that the
    answer says so instead of the upstream error the interrupted upload turns into.
    """

    def __init__(self, receive: Receive, limit: float) -> None:
        self.receive = receive
        self.limit = limit
        self.failure: Exception | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.failure = ClientException("client disconnected prematurely")
                raise self.failure
            chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
            if chunk:
                total += len(chunk)
                if total > self.limit:
                    self.failure = RequestTooLarge()
                    raise self.failure
                yield chunk
            if not message.get("more_body", False):
                return


async def request_body(
    pairs: Pairs, receive: Receive, max_body: int | None
) -> bytes | BodyStream | None:
    """The request body: bytes when sized and small, a stream when chunked or large, else None.

    The app's body-size limit holds as for every route: on the announced length and on the
    bytes actually received.
    """
    limit: float = max_body or math.inf
    length_header = header(pairs, "content-length")
    length: int | None = None
    if length_header is not None:
        try:
            length = int(length_header)
        except ValueError:
            raise ClientException(f"Invalid content-length: {length_header!r}") from None
        if length > limit:
            raise RequestTooLarge()
    if length is not None and length <= BUFFER_LIMIT:
        if length == 0:
            return None
        return b"".join([chunk async for chunk in BodyStream(receive, limit)]) or None
    if length is None and "chunked" not in (header(pairs, "transfer-encoding") or ""):
        return None
    return BodyStream(receive, limit)


async def open_upstream(
    c: Container,
    runtime: ProxyRuntime,
    scope: Scope,
    receive: Receive,
    instance_id: str | None,
    path: str,
) -> Upstream:
    """Authenticate and count the caller, then send their request to their own instance(s)."""
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
    principal = await principal_for(
        c, scope, header(pairs, "x-api-key"), header(pairs, "authorization")
    )
    path = "/" + path.lstrip("/")
    body = await request_body(pairs, receive, c.settings.http.max_body_bytes)
    try:
        return await runtime.forward(
            principal.user_id,
            method=scope["method"],  # type: ignore[typeddict-item]
            headers=pairs,
            body=body.__aiter__() if isinstance(body, BodyStream) else body,
            timeout=timelimit(header(pairs, "x-timelimit")),
            instance_id=instance_id,
            path=path,
            query=scope.get("query_string", b"").decode("latin-1"),
            caller=principal.caller(client_address(scope), header(pairs, "user-agent") or ""),
        )
    except TargetRefusedError as exc:
        proxy_envelope.refused(principal.user_id, exc, path)
        raise
    except Exception as exc:
        if isinstance(body, BodyStream) and body.failure is not None:
            raise body.failure from exc
        raise


async def send_upstream(upstream: Upstream, method: str, send: Send) -> None:
    """Pass the instance's answer on: in one message when small and sized, else streamed."""
    response = upstream.response
    headers = response.raw_headers.copy()  # filtered, lower-case names, bytes: as ASGI wants
    headers.append((b"x-gpuproxy-instance", upstream.endpoint.instance_id.encode()))
    length = response.content_length
    if method == "HEAD" or (length is not None and length <= BUFFER_LIMIT):
        ok = False
        try:
            body = await response.read()
            ok = response.status < 500
        finally:
            upstream.done(ok)
        size = length if method == "HEAD" and length is not None else len(body)
        headers.append((b"content-length", str(size).encode()))
        await send(_start(response.status, headers))
        await send(_body(b"" if method == "HEAD" else body, more=False))
        return
    await send(_start(response.status, headers))
    async for chunk in upstream.chunks():
        await send(_body(chunk, more=True))
    await send(_body(b"", more=False))


def _start(status: int, headers: list[tuple[bytes, bytes]]) -> HTTPResponseStartEvent:
    return {"type": "http.response.start", "status": status, "headers": headers}


def _body(chunk: bytes, *, more: bool) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": chunk, "more_body": more}
