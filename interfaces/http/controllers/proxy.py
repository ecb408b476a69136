"""The proxy routes and load-balancer settings.

- ``POST /api/v1/gpu/proxy``: the seed's envelope (protocol, target_url or instance_id,
  method, headers, body); answered with the upstream's own status, headers and body.
- ``/api/v1/gpu/proxy/{instance_id}/{path}`` and ``/api/v1/gpu/proxy/pool/{path}``: a raw
  reverse proxy (any method), bodies streamed both ways.
- ``/api/v1/loadbalancer/strategy`` and ``/api/v1/loadbalancer/load``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from litestar import Request, Response, Router, get, put, route
from litestar.di import NamedDependency, Provide
from litestar.enums import HttpMethod
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from litestar.types import (
    ASGIApp,
    Receive,
    Scope,
    Send,
)
from msgspec import UNSET

from domain.balancing import STRATEGIES
from infrastructure.identity.auth import Principal
from infrastructure.proxy.runtime import ProxyRuntime, Upstream
from interfaces import proxy_envelope as proxy_envelope_input
from interfaces.http import raw_proxy
from interfaces.http.openapi import AUTHED, binary_body, errors, operation, passthrough
from interfaces.http.raw_proxy import BUFFER_LIMIT
from interfaces.http.security import client_address, provide_principal
from interfaces.presenters.proxy import Load, Strategy, StrategySet, lease_of, server_load
from interfaces.proxy_envelope import ProxyBody, StrategyBody

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger(__name__)
PROTOCOLS = proxy_envelope_input.PROTOCOLS
# Methods without and with a request body: two handlers each, so OpenAPI can show the body.
READS: tuple[HttpMethod, ...] = (
    HttpMethod.GET,
    HttpMethod.DELETE,
    HttpMethod.HEAD,
    HttpMethod.OPTIONS,
)
WRITES: tuple[HttpMethod, ...] = (HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH)
METHODS = READS + WRITES
PASSTHROUGH = operation(
    body=binary_body("application/octet-stream", "Sent to the instance as is, any media type")
)
UPSTREAM = "The instance's own status, headers and body (streamed)"
UPSTREAM_ANSWERS = {**passthrough(UPSTREAM), **errors(*AUTHED, 402, 404, 502, 503, 504)}


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


@route(
    "/gpu/proxy",
    http_method=[HttpMethod.POST],
    status_code=200,
    summary="Send a request to one of your instances (http, https, openinference, mcp)",
    response_description=UPSTREAM,
    responses=UPSTREAM_ANSWERS,
    description=(
        "Sends one request to one of the caller's running instances, named by `instance_id` or "
        "`target_url`, over `protocol` http, https, openinference (`model` names the model) or "
        "mcp, with `method`, `headers`, `body`, `path` and `timeout` (or `X-Timelimit`), and "
        "answers with the instance's own status, headers and body. Each request costs the "
        "per-request fee from a credit lease. 400 for a bad envelope or a private target; 402 when "
        "credits or guard rails refuse the fee; 404 for an instance that is not the caller's; 502 "
        "when the instance fails; 503 when none is running; 504 when it does not answer in time."
    ),
)
async def proxy_envelope(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[ProxyRuntime],
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
    timeout = raw_proxy.timelimit(request.headers.get("x-timelimit"), data.timeout)
    caller = principal.caller(client_address(request.scope), request.headers.get("user-agent", ""))
    upstream = await proxy_envelope_input.send(
        runtime, principal.user_id, envelope, timeout, caller
    )
    return await answer(upstream)


async def _raw(
    request: Request[Any, Any, Any],
    c: Container,
    runtime: ProxyRuntime,
    instance_id: str | None,
    path: str,
) -> ASGIApp:
    """The raw reverse proxy as a Litestar route (the fast lane answers it first: fast_lane.py)."""
    upstream = await raw_proxy.open_upstream(
        c, runtime, request.scope, request.receive, instance_id, path
    )
    method = request.method

    async def respond(_scope: Scope, _receive: Receive, send: Send) -> None:
        await raw_proxy.send_upstream(upstream, method, send)

    return respond


POOL_PATHS = ["/gpu/proxy/pool", "/gpu/proxy/pool/{path:path}"]
INSTANCE_PATHS = ["/gpu/proxy/{instance_id:uuid}", "/gpu/proxy/{instance_id:uuid}/{path:path}"]
POOL = "Reverse proxy balanced over all your running instances"
ONE = "Reverse proxy to one of your instances"


@route(
    POOL_PATHS,
    http_method=list(READS),
    status_code=200,
    summary=POOL,
    response_description=UPSTREAM,
    responses=UPSTREAM_ANSWERS,
    description=(
        "Reverse proxy without a body (GET, DELETE, HEAD, OPTIONS): the request (path after "
        "`/pool`, query, headers) goes to one of the caller's running instances, chosen by the "
        "caller's load-balancing strategy, and the instance's answer is streamed back as is. Each "
        "request costs the per-request fee. 402 when credits or guard rails refuse it; 502 when "
        "the instance fails; 503 when none is running; 504 when it does not answer in time."
    ),
)
async def proxy_pool(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    path: FromPath[str] = "/",
) -> ASGIApp:
    return await _raw(request, c, runtime, None, path)


@route(
    POOL_PATHS,
    http_method=list(WRITES),
    status_code=200,
    summary=POOL,
    response_description=UPSTREAM,
    responses={**UPSTREAM_ANSWERS, **errors(413)},
    operation_class=PASSTHROUGH,
    description=(
        "Reverse proxy with a body (POST, PUT, PATCH): as the pool's other methods, and the body "
        "is streamed to the chosen instance as is. Each request costs the per-request fee. 402 "
        "when credits or guard rails refuse it; 413 over the body limit; 502 when the instance "
        "fails; 503 when none is running; 504 when it does not answer in time."
    ),
)
async def proxy_pool_body(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    path: FromPath[str] = "/",
) -> ASGIApp:
    return await _raw(request, c, runtime, None, path)


@route(
    INSTANCE_PATHS,
    http_method=list(READS),
    status_code=200,
    summary=ONE,
    response_description=UPSTREAM,
    responses=UPSTREAM_ANSWERS,
    description=(
        "Reverse proxy without a body (GET, DELETE, HEAD, OPTIONS) to one of the caller's "
        "instances by id: the request (path after the id, query, headers) is forwarded and the "
        "instance's answer streamed back as is. Each request costs the per-request fee. 402 when "
        "credits or guard rails refuse it; 404 for an instance that is not the caller's; 502 when "
        "it fails; 503 when it is not running; 504 when it does not answer in time."
    ),
)
async def proxy_instance(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    instance_id: FromPath[UUID],
    path: FromPath[str] = "/",
) -> ASGIApp:
    return await _raw(request, c, runtime, str(instance_id), path)


@route(
    INSTANCE_PATHS,
    http_method=list(WRITES),
    status_code=200,
    summary=ONE,
    response_description=UPSTREAM,
    responses={**UPSTREAM_ANSWERS, **errors(413)},
    operation_class=PASSTHROUGH,
    description=(
        "Reverse proxy with a body (POST, PUT, PATCH) to one of the caller's instances by id: as "
        "its other methods, and the body is streamed to the instance as is. Each request costs the "
        "per-request fee. 402 when credits or guard rails refuse it; 404 for an instance that is "
        "not the caller's; 413 over the body limit; 502, 503, 504 as the instance fails, is not "
        "running or times out."
    ),
)
async def proxy_instance_body(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    instance_id: FromPath[UUID],
    path: FromPath[str] = "/",
) -> ASGIApp:
    return await _raw(request, c, runtime, str(instance_id), path)


@get(
    "/loadbalancer/strategy",
    summary="Your load-balancing strategy",
    responses=errors(401, 429),
    description=(
        "The load-balancing strategy the pool proxy uses for the caller, and the strategies "
        "available. Any authenticated caller; changes nothing."
    ),
)
async def get_strategy(
    runtime: NamedDependency[ProxyRuntime], principal: NamedDependency[Principal]
) -> Strategy:
    name = await runtime.strategy(principal.user_id)
    return Strategy(strategy=name, available=list(STRATEGIES))


@put(
    "/loadbalancer/strategy",
    sync_to_thread=True,
    summary="Choose your load-balancing strategy",
    responses=errors(*AUTHED),
    description=(
        "Sets the load-balancing strategy the pool proxy uses for the caller (one of those GET "
        "/loadbalancer/strategy lists), on every replica. 400 for an unknown strategy."
    ),
)
def set_strategy(
    runtime: NamedDependency[ProxyRuntime],
    principal: NamedDependency[Principal],
    data: JSONBody[StrategyBody],
) -> StrategySet:
    name = runtime.set_strategy(principal.user_id, data.strategy)
    return StrategySet(strategy=name, message="Load balancing strategy updated")


LoadType = Annotated[
    str, QueryParameter(pattern="^(server|provider|all)$", description="server, provider or all")
]


def _server_load(c: Container, runtime: ProxyRuntime, user_id: str) -> Any:
    rows = c.instance_queries.traffic_for(user_id)
    return server_load(rows, runtime.tracker.snapshot())


@get(
    "/loadbalancer/load",
    sync_to_thread=True,
    summary="Server and provider load",
    responses=errors(*AUTHED),
    description=(
        "The load the caller's proxy traffic puts on their instances: per instance requests, "
        "errors, latency, live connections and ejection (`type=server`), totals per provider "
        "(`type=provider`), or both (`all`), with the strategy and the credit lease. Own instances "
        "only; changes nothing. 400 for another `type`."
    ),
)
def load(
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    principal: NamedDependency[Principal],
    type: LoadType = "all",
) -> Load:
    return Load.of(
        runtime.current_strategy(principal.user_id),
        _server_load(c, runtime, principal.user_id),
        type,
        lease_of(runtime.leases.snapshot().get(principal.user_id)),
    )


router = Router(
    path="/api/v1",
    tags=["proxy"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[
        proxy_envelope,
        proxy_pool,
        proxy_pool_body,
        proxy_instance,
        proxy_instance_body,
        get_strategy,
        set_strategy,
        load,
    ],
)
