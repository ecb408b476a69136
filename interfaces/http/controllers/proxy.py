"""The proxy routes and load-balancer settings.

- ``POST /api/v1/gpu/proxy``: the seed's envelope (protocol, target_url or instance_id,
  method, headers, body); answered with the upstream's own status, headers and body.
- ``/api/v1/gpu/proxy/{instance_id}/{path}`` and ``/api/v1/gpu/proxy/pool/{path}``: a raw
  reverse proxy (any method), bodies streamed both ways.
- ``/api/v1/loadbalancer/strategy`` and ``/api/v1/loadbalancer/load``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from typing import Annotated, Any
from uuid import UUID

from litestar import Request, Response, Router, get, put, route
from litestar.di import NamedDependency, Provide
from litestar.enums import HttpMethod
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Receive,
    Scope,
    Send,
)
from msgspec import UNSET, Meta, Struct, UnsetType

from domain.balancing import STRATEGIES
from domain.errors import InvalidArgumentError
from domain.money import micros_to_usd
from infrastructure.auth import Principal
from infrastructure.proxy.runtime import ProxyRuntime, Upstream
from infrastructure.proxy.targets import TargetRefusedError
from interfaces import proxy_envelope as proxy_envelope_input
from interfaces.http.schemas import NO_NUL
from interfaces.http.security import container_of, provide_principal

log = logging.getLogger(__name__)
PROTOCOLS = proxy_envelope_input.PROTOCOLS
METHODS: tuple[HttpMethod, ...] = (
    HttpMethod.GET,
    HttpMethod.POST,
    HttpMethod.PUT,
    HttpMethod.PATCH,
    HttpMethod.DELETE,
    HttpMethod.HEAD,
    HttpMethod.OPTIONS,
)
BUFFER_LIMIT = 1_048_576  # request bodies up to this are buffered, so a retry can resend them
MAX_TIMELIMIT = 86_400.0
Text = Annotated[str, Meta(max_length=4096, pattern=NO_NUL)]


class ProxyBody(Struct, forbid_unknown_fields=True):
    protocol: Annotated[str, Meta(min_length=1, max_length=20)]
    target_url: Text | None = None
    instance_id: Annotated[str, Meta(max_length=64, pattern=NO_NUL)] | None = None
    method: Annotated[str, Meta(max_length=10)] = "POST"
    headers: dict[
        Annotated[str, Meta(max_length=256, pattern=NO_NUL)],
        Annotated[str, Meta(max_length=8192, pattern=NO_NUL)],
    ] = {}
    body: Any | UnsetType = UNSET
    path: Text | None = None
    model: Annotated[str, Meta(max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")] | None = None
    timeout: Annotated[float, Meta(gt=0, le=MAX_TIMELIMIT)] | None = None


class StrategyBody(Struct, forbid_unknown_fields=True):
    strategy: Annotated[str, Meta(min_length=1, max_length=64)]


def runtime_of(request: Request[Any, Any, Any]) -> ProxyRuntime:
    runtime: ProxyRuntime = request.app.state.proxy
    return runtime


def timelimit(request: Request[Any, Any, Any], fallback: float | None = None) -> float | None:
    """``X-Timelimit`` in seconds (decimal), bounding the whole proxied request."""
    raw = request.headers.get("x-timelimit")
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


async def answer(upstream: Upstream) -> Response[bytes] | Stream:
    """The envelope's answer: the instance's status, headers and body (buffered when small)."""
    headers = dict(upstream.response.headers)
    headers["x-gpuproxy-instance"] = upstream.endpoint.instance_id
    media_type = headers.pop("content-type", None) or headers.pop("Content-Type", None)
    for name in [k for k in headers if k.lower() == "content-type"]:
        media_type = headers.pop(name)
    length = upstream.response.content_length
    if length is not None and length <= BUFFER_LIMIT:
        ok = False
        try:
            body = await upstream.response.read()
            ok = upstream.response.status < 500
        finally:
            upstream.done(ok)
        return Response(
            body,
            status_code=upstream.response.status,
            headers=headers,
            media_type=media_type or "application/octet-stream",
        )
    return Stream(
        upstream.chunks(),
        status_code=upstream.response.status,
        headers=headers,
        media_type=media_type or "application/octet-stream",
    )


async def _body_of(request: Request[Any, Any, Any]) -> bytes | AsyncIterator[bytes] | None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) <= BUFFER_LIMIT:
        data = await request.body()
        return data or None
    if length is None and "chunked" not in request.headers.get("transfer-encoding", ""):
        return None
    return request.stream()


@route(
    "/gpu/proxy",
    http_method=[HttpMethod.POST],
    status_code=200,
    summary="Send a request to one of your instances (http, https, openinference, mcp)",
)
async def proxy_envelope(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    data: JSONBody[ProxyBody],
) -> Response[bytes] | Stream:
    envelope = proxy_envelope_input.prepare(
        protocol=data.protocol,
        method=data.method,
        target_url=data.target_url,
        instance_id=data.instance_id,
        headers=data.headers,
        body=proxy_envelope_input.NO_BODY if data.body is UNSET else data.body,
        path=data.path,
        model=data.model,
    )
    upstream = await proxy_envelope_input.send(
        runtime_of(request), principal.user_id, envelope, timelimit(request, data.timeout)
    )
    return await answer(upstream)


async def _raw(request: Request[Any, Any, Any], instance_id: str | None, path: str) -> ASGIApp:
    """The raw reverse proxy. The hot path: no dependency injection, no signature model for
    parameters, and the answer is a plain ASGI callable rather than a Response object (a
    streamed Response costs a task group per request; docs/performance.md).

    Authentication and the rate limit are the same function the other routes use as their
    dependency; errors raised before the answer starts go through the app's handlers.
    """
    principal = await provide_principal(request)
    path = "/" + path.lstrip("/")
    method = request.method
    try:
        upstream = await runtime_of(request).forward(
            principal.user_id,
            method=method,
            headers=request.headers.items(),
            body=await _body_of(request),
            timeout=timelimit(request),
            instance_id=instance_id,
            path=path,
            query=request.scope.get("query_string", b"").decode("latin-1"),
        )
    except TargetRefusedError as exc:
        proxy_envelope_input.refused(principal.user_id, exc, path)
        raise

    async def respond(_scope: Scope, _receive: Receive, send: Send) -> None:
        await _send_upstream(upstream, method, send)

    return respond


async def _send_upstream(upstream: Upstream, method: str, send: Send) -> None:
    """Pass the instance's answer on: in one message when small and sized, else streamed."""
    response = upstream.response
    headers: list[tuple[bytes, bytes]] = [
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers
    ]
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


@route(
    ["/gpu/proxy/pool", "/gpu/proxy/pool/{path:path}"],
    http_method=list(METHODS),
    summary="Reverse proxy balanced over all your running instances",
)
async def proxy_pool(request: Request[Any, Any, Any], path: FromPath[str] = "/") -> ASGIApp:
    return await _raw(request, None, path)


@route(
    ["/gpu/proxy/{instance_id:uuid}", "/gpu/proxy/{instance_id:uuid}/{path:path}"],
    http_method=list(METHODS),
    summary="Reverse proxy to one of your instances",
)
async def proxy_instance(
    request: Request[Any, Any, Any], instance_id: FromPath[UUID], path: FromPath[str] = "/"
) -> ASGIApp:
    return await _raw(request, str(instance_id), path)


@get("/loadbalancer/strategy", summary="Your load-balancing strategy")
async def get_strategy(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> dict[str, Any]:
    name = await runtime_of(request).strategy(principal.user_id)
    return {"strategy": name, "available": list(STRATEGIES)}


@put("/loadbalancer/strategy", sync_to_thread=True, summary="Choose your load-balancing strategy")
def set_strategy(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    data: JSONBody[StrategyBody],
) -> dict[str, Any]:
    name = runtime_of(request).set_strategy(principal.user_id, data.strategy)
    return {"strategy": name, "message": "Load balancing strategy updated"}


LoadType = Annotated[
    str, QueryParameter(pattern="^(server|provider|all)$", description="server, provider or all")
]


def _server_load(request: Request[Any, Any, Any], user_id: str) -> dict[str, Any]:
    runtime = runtime_of(request)
    c = container_of(request)
    live = runtime.tracker.snapshot()
    with c.db.read() as tx:
        rows = tx.fetchall(
            "SELECT i.instance_id, i.provider, i.gpu_model, i.state, "
            "COALESCE(l.requests, 0), COALESCE(l.errors, 0), COALESCE(l.latency_ms_sum, 0) "
            "FROM instances i LEFT JOIN proxy_load l ON l.instance_id = i.instance_id "
            "WHERE i.owner = ? AND i.state IN ('running', 'stopping') ORDER BY i.requested_at",
            (user_id,),
        )
    instances = []
    for iid, provider, model, state, requests, errors, latency in rows:
        now = live.get(iid)
        instances.append(
            {
                "instance_id": iid,
                "provider": provider,
                "gpu_model": model,
                "state": state,
                "active_connections": now.active if now else 0,
                "avg_response_time_ms": round(now.ewma_ms, 3) if now else None,
                "consecutive_failures": now.consecutive_failures if now else 0,
                "ejected": bool(now and now.ejected),
                "total_requests": int(requests),
                "total_errors": int(errors),
                "mean_latency_ms": round(latency / requests, 3) if requests else None,
            }
        )
    return {"instances": instances, "count": len(instances)}


def _provider_load(server: dict[str, Any]) -> dict[str, Any]:
    providers: dict[str, dict[str, Any]] = {}
    for item in server["instances"]:
        entry = providers.setdefault(
            item["provider"],
            {"instances": 0, "active_connections": 0, "total_requests": 0, "total_errors": 0},
        )
        entry["instances"] += 1
        entry["active_connections"] += item["active_connections"]
        entry["total_requests"] += item["total_requests"]
        entry["total_errors"] += item["total_errors"]
    return providers


@get("/loadbalancer/load", sync_to_thread=True, summary="Server and provider load")
def load(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    type: LoadType = "all",
) -> dict[str, Any]:
    runtime = runtime_of(request)
    server = _server_load(request, principal.user_id)
    body: dict[str, Any] = {"strategy": runtime.current_strategy(principal.user_id)}
    if type in {"server", "all"}:
        body["server"] = server
    if type in {"provider", "all"}:
        body["provider"] = _provider_load(server)
    lease = runtime.leases.snapshot().get(principal.user_id)
    if lease is not None:
        body["lease"] = {"held": micros_to_usd(lease.amount), "spent": micros_to_usd(lease.spent)}
    return body


router = Router(
    path="/api/v1",
    tags=["proxy"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[
        proxy_envelope,
        proxy_pool,
        proxy_instance,
        get_strategy,
        set_strategy,
        load,
    ],
)
