"""The proxy RPCs over the process's one ``ProxyRuntime`` (shared with the REST routes).

``ProxyRequestMessage`` is read with the rules of ``POST /api/v1/gpu/proxy`` (the same
validation struct, then ``interfaces.proxy_envelope``): protocol http/https/openinference/mcp,
exactly one of ``target_url`` or ``instance_id`` (your own instance, else PERMISSION_DENIED /
NOT_FOUND), ``timeout`` in seconds (the call's deadline when 0). For http/https ``body`` is
sent as is; for openinference and mcp it must be JSON, completed as the REST envelope does.

Stream framing (StreamProxyRequest): requests are served in order, one at a time; each answer
is a first message with ``status_code``, ``headers`` and ``instance_id``, then one message per
body chunk as it arrives (at most ``CHUNK`` bytes each), then a message with ``last`` set and
no body. ``sequence`` numbers the requests of the stream from 0. A refused request ends the
stream with its status, like a failed unary call.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import msgspec
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from domain.errors import InvalidArgumentError
from infrastructure.proxy.runtime import ProxyRuntime, Upstream
from infrastructure.readmodels.queries.instances import InstanceQueries
from interfaces import proxy_envelope as envelope
from interfaces.grpc.auth import count_request
from interfaces.grpc.calls import Call
from interfaces.grpc.convert import usd_out
from interfaces.grpc.generated import gpuproxy as pb
from interfaces.proxy_envelope import ProxyBody

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

MAX_UNARY_BODY = 4 * 1024 * 1024 - 64 * 1024  # a unary answer must fit a 4 MiB gRPC message
CHUNK = 256 * 1024
JSON_PROTOCOLS = frozenset({"openinference", "mcp"})


def _checked(msg: pb.ProxyRequestMessage) -> ProxyBody:
    """The fields, within the REST envelope's limits (lengths, no NUL, model name, timeout)."""
    fields: dict[str, Any] = {
        "protocol": msg.protocol or "-",
        "method": msg.method or "POST",
        "headers": dict(msg.headers),
    }
    for name in ("target_url", "instance_id", "path", "model"):
        if value := getattr(msg, name):
            fields[name] = value
    if msg.timeout:
        fields["timeout"] = msg.timeout
    try:
        return msgspec.convert(fields, ProxyBody)
    except msgspec.ValidationError as exc:
        raise InvalidArgumentError(f"Invalid request: {exc}") from None


async def forward(runtime: ProxyRuntime, call: Call, msg: pb.ProxyRequestMessage) -> Upstream:
    """What ``POST /api/v1/gpu/proxy`` does with the same envelope, up to the answer."""
    data = _checked(msg)
    body: Any = envelope.NO_BODY
    if msg.body and data.protocol.strip().lower() in JSON_PROTOCOLS:
        try:
            body = json.loads(msg.body)
        except ValueError:
            raise InvalidArgumentError(f"{data.protocol} needs a JSON body", field="body") from None
    elif msg.body:
        body = bytes(msg.body)  # http/https: sent as it came
    prepared = envelope.prepare(
        protocol=data.protocol,
        method=data.method,
        target_url=data.target_url,
        instance_id=data.instance_id,
        headers=data.headers,
        body=body,
        path=data.path,
        model=data.model,
    )
    timeout = data.timeout
    left = call.time_left()
    if left is not None:
        timeout = left if timeout is None else min(timeout, left)
    caller = call.user.caller(call.peer_host, call.user_agent)
    return await envelope.send(runtime, call.user.user_id, prepared, timeout, caller)


def _body(upstream: Upstream) -> AsyncGenerator[bytes, None]:
    """The body's chunks; closing it early releases the connection and the load slot."""
    return cast("AsyncGenerator[bytes, None]", upstream.chunks())


def response_headers(upstream: Upstream) -> dict[str, str]:
    """The instance's headers (repeated names joined with ", ") and ``x-gpuproxy-instance``."""
    headers: dict[str, str] = {}
    for name, value in upstream.response.headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    headers["x-gpuproxy-instance"] = upstream.endpoint.instance_id
    return headers


async def unary(runtime: ProxyRuntime, call: Call, msg: pb.ProxyRequestMessage) -> pb.ProxyResponse:
    upstream = await forward(runtime, call, msg)
    body = bytearray()
    async with contextlib.aclosing(_body(upstream)) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > MAX_UNARY_BODY:
                raise GRPCError(
                    Status.RESOURCE_EXHAUSTED,
                    f"the instance's answer is over {MAX_UNARY_BODY} bytes: use StreamProxyRequest",
                )
    return pb.ProxyResponse(
        status_code=upstream.response.status,
        headers=response_headers(upstream),
        body=bytes(body),
        instance_id=upstream.endpoint.instance_id,
    )


async def stream(
    runtime: ProxyRuntime,
    c: Container,
    call: Call,
    requests: AsyncIterator[pb.ProxyRequestMessage],
) -> AsyncIterator[pb.ProxyResponse]:
    """Serve a stream's requests in order, with the framing of the module docstring."""
    sequence = 0
    async for msg in requests:
        if sequence:  # the call's authentication counted the first request
            await count_request(c, call.user)
        upstream = await forward(runtime, call, msg)
        instance = upstream.endpoint.instance_id
        async with contextlib.aclosing(_body(upstream)) as chunks:
            yield pb.ProxyResponse(
                status_code=upstream.response.status,
                headers=response_headers(upstream),
                instance_id=instance,
                sequence=sequence,
            )
            async for chunk in chunks:
                for start in range(0, len(chunk), CHUNK):
                    yield pb.ProxyResponse(
                        body=chunk[start : start + CHUNK], instance_id=instance, sequence=sequence
                    )
        yield pb.ProxyResponse(instance_id=instance, sequence=sequence, last=True)
        sequence += 1


# ------------------------------------------------------------------ load report


def _server_rows(
    runtime: ProxyRuntime, instances: InstanceQueries, user_id: str
) -> list[pb.LoadInfo]:
    live = runtime.tracker.snapshot()
    out = []
    for row in instances.traffic_for(user_id):
        now = live.get(row.instance_id)
        requests = row.requests
        out.append(
            pb.LoadInfo(
                instance_id=row.instance_id,
                provider=row.provider,
                connections=now.active if now else 0,
                avg_response_time_ms=round(now.ewma_ms, 3) if now else 0.0,
                state=row.state,
                gpu_model=row.gpu_model,
                total_requests=requests,
                total_errors=row.errors,
                ejected=bool(now and now.ejected),
                consecutive_failures=now.consecutive_failures if now else 0,
                mean_latency_ms=round(row.latency_ms_sum / requests, 3) if requests else 0.0,
            )
        )
    return out


def _with_scores(rows: list[pb.LoadInfo]) -> list[pb.LoadInfo]:
    total = sum(r.connections for r in rows)
    for row in rows:
        row.load_score = row.connections / total if total else 0.0
    return rows


def _provider_rows(server: list[pb.LoadInfo]) -> list[pb.LoadInfo]:
    providers: dict[str, pb.LoadInfo] = {}
    for item in server:
        entry = providers.setdefault(item.provider, pb.LoadInfo(provider=item.provider))
        entry.instances += 1
        entry.connections += item.connections
        entry.total_requests += item.total_requests
        entry.total_errors += item.total_errors
    return list(providers.values())


def load_info(
    runtime: ProxyRuntime, instances: InstanceQueries, user_id: str, kind: str
) -> pb.GetLoadInfoResponse:
    """``GET /api/v1/loadbalancer/load`` as the earlier proto's message (blocking: a thread)."""
    kind = kind.strip().lower() or "all"
    if kind not in {"server", "provider", "all"}:
        raise InvalidArgumentError("type must be server, provider or all", field="type")
    server = _with_scores(_server_rows(runtime, instances, user_id))
    answer = pb.GetLoadInfoResponse(current_strategy=runtime.current_strategy(user_id))
    if kind in {"server", "all"}:
        answer.server_load = server
    if kind in {"provider", "all"}:
        answer.provider_load = _with_scores(_provider_rows(server))
    lease = runtime.leases.snapshot().get(user_id)
    if lease is not None:
        answer.lease_held = usd_out(lease.amount)
        answer.lease_spent = usd_out(lease.spent)
    return answer
