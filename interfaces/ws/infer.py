"""Streaming inference over ``/ws``: the proxy's own forwarding path, chunks sent as they come.

To an instance (or balanced over the caller's instances) the request goes through
``ProxyRuntime.forward`` exactly like ``POST /api/v1/gpu/proxy``: the caller's own running
instances only (target guard, no SSRF), the per-request fee from the credit lease, the
balancing strategy and load tracking, the retry budget. To a hosted model (``model_id``) it
goes through ``ModelService.predict`` like ``POST /api/v1/models/{id}/predict`` (same body,
same fee and usage), answered as one chunk. Each counts against the caller's rate limit.
Answers: ``infer.start`` (status, instance or model), ``infer.chunk`` (``data`` text, or
``data_base64`` for binary bodies), ``infer.end``; or one ``error``.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import json
import logging
from typing import TYPE_CHECKING, Any

from domain.errors import DomainError, InvalidArgumentError
from domain.usage import Caller
from infrastructure.models.tensors import to_json
from infrastructure.proxy.runtime import ProxyRuntime
from interfaces.http.security import client_address
from interfaces.model_input import inputs_by_name
from interfaces.proxy_envelope import Envelope, prepare, send
from interfaces.ws.protocol import Infer
from interfaces.ws.session import Session

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger(__name__)
MAX_IN_FLIGHT = 4
TEXT_TYPES = ("text/", "application/json", "application/x-ndjson", "application/problem+json")


def error_message(exc: DomainError, ref: str | None) -> dict[str, Any]:
    details = {k: v for k, v in exc.details.items() if isinstance(v, str | int | bool)}
    return {
        "type": "error",
        "id": ref,
        "code": "infer_failed",
        "status": exc.status,
        "title": exc.title,
        "error": exc.message,
        **({"details": details} if details else {}),
    }


def _request(msg: Infer) -> Envelope:
    """The proxy envelope for an ``infer`` message (same checks as the REST envelope)."""
    return prepare(
        protocol=msg.protocol,
        method=msg.method or "POST",
        target_url=None,
        instance_id=msg.instance_id,
        headers=dict(msg.headers),
        body=msg.payload,
        path=msg.path,
        model=msg.model,
        pool=True,
    )


async def _check_rate(c: Container, session: Session) -> None:
    decision = await asyncio.to_thread(c.limiter.hit, session.user_id)
    if not decision.allowed:
        raise _RateLimitedError(decision.retry_after)


class _RateLimitedError(DomainError):
    status = 429
    title = "Too many requests"

    def __init__(self, retry_after: int) -> None:
        super().__init__("rate limit exceeded", retry_after=retry_after)


def _caller(session: Session) -> Caller:
    """The socket's credential and client address, for the caller's usage session."""
    scope = session.socket.scope
    agent = dict(scope.get("headers") or ()).get(b"user-agent", b"").decode("latin-1")
    return session.principal.caller(client_address(scope), agent)


async def run_infer(
    c: Container, runtime: ProxyRuntime, session: Session, msg: Infer, ref: str
) -> None:
    """Serve one ``infer`` message to its end (or its first error); ``ref`` names it."""
    try:
        if msg.model_id is not None:
            if msg.instance_id is not None:
                raise InvalidArgumentError(
                    "give instance_id or model_id, not both", field="model_id"
                )
            await _check_rate(c, session)
            await _predict(c, session, msg.model_id, msg.payload, ref)
            return
        envelope = _request(msg)
        await _check_rate(c, session)
        upstream = await send(runtime, session.user_id, envelope, msg.timeout, _caller(session))
        content_type = next(
            (v for k, v in upstream.response.headers if k.lower() == "content-type"), ""
        )
        await session.send(
            {
                "type": "infer.start",
                "id": ref,
                "status": upstream.response.status,
                "instance_id": upstream.endpoint.instance_id,
                "content_type": content_type or None,
            }
        )
        text = content_type.lower().startswith(TEXT_TYPES)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        size = count = 0
        async for chunk in upstream.chunks():
            size += len(chunk)
            count += 1
            if text:
                piece = {"data": decoder.decode(chunk)}
            else:
                piece = {"data_base64": base64.b64encode(chunk).decode("ascii")}
            await session.send({"type": "infer.chunk", "id": ref, "seq": count, **piece})
        if text and (tail := decoder.decode(b"", final=True)):
            count += 1
            await session.send({"type": "infer.chunk", "id": ref, "seq": count, "data": tail})
        await session.send({"type": "infer.end", "id": ref, "bytes": size, "chunks": count})
    except DomainError as exc:
        await session.send(error_message(exc, ref))
    finally:
        session.inferences.pop(ref, None)


async def _predict(c: Container, session: Session, model_id: str, payload: Any, ref: str) -> None:
    """One hosted-model prediction, answered as start, one JSON chunk, end."""
    if not isinstance(payload, dict) or "input" not in payload:
        raise InvalidArgumentError(
            'a model payload is {"input": ..., "outputs": [...]} as for /predict',
            field="payload",
        )
    outputs = payload.get("outputs") or ()
    if not isinstance(outputs, list | tuple) or not all(isinstance(o, str) for o in outputs):
        raise InvalidArgumentError("outputs must be a list of output names", field="outputs")
    service = c.model_service()
    record = await service.find(session.user_id, model_id)
    _, result = await service.predict(
        session.user_id,
        model_id,
        inputs_by_name(record, payload["input"]),
        outputs=tuple(outputs),
        caller=_caller(session),
    )
    row = result.rows is None
    values = {name: to_json(value, row=row) for name, value in result.outputs.items()}
    body = json.dumps(
        {
            "model_id": record.model_id,
            "output": next(iter(values.values())),
            "outputs": values,
            "latency_ms": round(result.latency_ms, 3),
            "runtime": result.runtime,
            "used_gpu": result.used_gpu,
        }
    )
    await session.send(
        {
            "type": "infer.start",
            "id": ref,
            "status": 200,
            "model_id": record.model_id,
            "content_type": "application/json",
        }
    )
    await session.send({"type": "infer.chunk", "id": ref, "seq": 1, "data": body})
    await session.send({"type": "infer.end", "id": ref, "bytes": len(body.encode()), "chunks": 1})
