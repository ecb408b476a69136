"""The proxy action: one request to the caller's own instance through ``ProxyRuntime``.

It takes the REST envelope (``ProxyBody``) and follows ``POST /api/v1/gpu/proxy`` step for
step, reusing its helpers: the same target guard (no SSRF), credit lease, balancing, retries
and usage counting. The upstream answer is read whole (up to 1 MiB) and returned as data.
"""

from __future__ import annotations

import asyncio
import base64
import json
import zlib
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, Annotated, Any, cast

from msgspec import UNSET, Meta

from domain.balancing import STRATEGIES
from infrastructure.proxy.forwarder import UpstreamError
from interfaces.agents.base import Action, NoArgs, Result
from interfaces.proxy_envelope import MAX_TIMELIMIT, NO_BODY, ProxyBody, StrategyBody, prepare, send

if TYPE_CHECKING:
    from infrastructure.identity.auth import Principal
    from infrastructure.proxy.runtime import ProxyRuntime, Upstream
    from interfaces.bootstrap import Container

MAX_REPLY = 1_048_576


class ProxyArgs(ProxyBody, kw_only=True, forbid_unknown_fields=True):
    protocol: Annotated[str, Meta(min_length=1, max_length=20)] = "openinference"


async def _read(upstream: Upstream) -> bytes:
    chunks: list[bytes] = []
    size = 0
    stream = cast(AsyncGenerator[bytes, None], upstream.chunks())
    async with aclosing(stream):
        async for chunk in stream:
            size += len(chunk)
            if size > MAX_REPLY:
                raise UpstreamError(
                    f"the instance's answer is larger than {MAX_REPLY} bytes; "
                    "use POST /api/v1/gpu/proxy to stream it"
                )
            chunks.append(chunk)
    return b"".join(chunks)


def _decode(raw: bytes, headers: dict[str, str]) -> dict[str, Any]:
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding in {"gzip", "deflate"}:
        inflate = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, detected
        try:
            plain = inflate.decompress(raw, 4 * MAX_REPLY)
        except zlib.error:
            return {"body_base64": base64.b64encode(raw).decode()}
        if inflate.unconsumed_tail:
            raise UpstreamError(f"the instance's answer inflates past {4 * MAX_REPLY} bytes")
        raw = plain
    elif encoding != "identity":
        return {"body_base64": base64.b64encode(raw).decode()}
    if "json" in headers.get("content-type", ""):
        try:
            return {"body": json.loads(raw)}
        except ValueError:
            pass
    try:
        return {"body": raw.decode()}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(raw).decode()}


async def proxy_inference_request(
    _c: Container, rt: ProxyRuntime, p: Principal, data: ProxyArgs
) -> Result:
    envelope = prepare(
        protocol=data.protocol,
        method=data.method,
        target_url=data.target_url,
        instance_id=data.instance_id,
        headers=data.headers,
        body=NO_BODY if data.body is UNSET else data.body,
        path=data.path,
        model=data.model,
    )
    upstream = await send(rt, p.user_id, envelope, data.timeout)
    raw = await _read(upstream)
    answer_headers = {k.lower(): v for k, v in upstream.response.headers}
    return {
        "status": upstream.response.status,
        "instance_id": upstream.endpoint.instance_id,
        "content_type": answer_headers.get("content-type"),
        **_decode(raw, answer_headers),
    }


async def get_lb_strategy(_c: Container, rt: ProxyRuntime, p: Principal, _a: NoArgs) -> Result:
    return {"strategy": await rt.strategy(p.user_id), "available": list(STRATEGIES)}


async def set_lb_strategy(_c: Container, rt: ProxyRuntime, p: Principal, a: StrategyBody) -> Result:
    name = await asyncio.to_thread(rt.set_strategy, p.user_id, a.strategy)
    return {"strategy": name, "message": "Load balancing strategy updated"}


ACTIONS = (
    Action(
        name="proxy_inference_request",
        description=(
            "Send a request to one of your running GPU instances through the proxy and return "
            "its answer (status, body). protocol openinference calls OIP v2 "
            "/v2/models/{model}/infer; http/https forward to path; mcp forwards JSON-RPC."
        ),
        args=ProxyArgs,
        handler=proxy_inference_request,
        aliases=("inference.proxy", "proxy-inference-request", "proxy", "infer"),
        hints={
            "protocol": "openinference (default), http, https or mcp",
            "instance_id": "one of your running instances (give this or target_url)",
            "target_url": "URL on one of your running instances (give this or instance_id)",
            "model": "OIP v2 model name, e.g. demo",
            "path": "request path on the instance, e.g. /echo",
            "method": "HTTP method (default POST)",
            "body": "JSON body, e.g. OIP v2 {inputs: [...]}",
            "headers": "extra request headers",
            "timeout": f"seconds, at most {MAX_TIMELIMIT:.0f}",
        },
    ),
    Action(
        name="get_lb_strategy",
        description="Your load-balancing strategy for proxied requests, and the choices.",
        args=NoArgs,
        handler=get_lb_strategy,
        read_only=True,
        aliases=("loadbalancer.strategy", "lb-strategy"),
    ),
    Action(
        name="set_lb_strategy",
        description="Choose how proxied requests are spread over your running instances.",
        args=StrategyBody,
        handler=set_lb_strategy,
        aliases=("loadbalancer.set_strategy", "set-lb-strategy"),
        hints={"strategy": ", ".join(STRATEGIES)},
    ),
)
