"""The seed's proxy envelope, one way for every door (REST, gRPC, agents).

``protocol`` (http, https, openinference, mcp), ``target_url`` or ``instance_id``, ``method``,
``headers``, ``body`` (JSON value or text), and for OIP v2 ``model`` or ``path``: checked and
turned into what ``ProxyRuntime.forward`` takes. Refused targets are logged here.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from msgspec import UNSET, Meta, Struct

from domain.errors import InvalidArgumentError
from domain.usage import Caller
from infrastructure.proxy.targets import TargetRefusedError
from interfaces.http.schemas import NO_NUL

if TYPE_CHECKING:
    from infrastructure.proxy.runtime import ProxyRuntime, Upstream

log = logging.getLogger(__name__)
PROTOCOLS = ("http", "https", "openinference", "mcp")
METHOD_NAMES = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
NO_BODY = object()  # the envelope had no body at all (distinct from JSON null)
MAX_TIMELIMIT = 86_400.0  # seconds a proxied request may take at most


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
    body: Any = UNSET  # absent: no body (null is a JSON body)
    path: Text | None = None
    model: Annotated[str, Meta(max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")] | None = None
    timeout: Annotated[float, Meta(gt=0, le=MAX_TIMELIMIT)] | None = None


class StrategyBody(Struct, forbid_unknown_fields=True):
    strategy: Annotated[str, Meta(min_length=1, max_length=64)]


@dataclass(frozen=True)
class Envelope:
    """A checked envelope, ready for ``ProxyRuntime.forward``."""

    method: str
    headers: dict[str, str]
    body: bytes | None
    target_url: str | None
    instance_id: str | None
    path: str
    query: str


def prepare(
    *,
    protocol: str,
    method: str,
    target_url: str | None,
    instance_id: str | None,
    headers: Mapping[str, str],
    body: Any = NO_BODY,
    path: str | None = None,
    model: str | None = None,
    pool: bool = False,
) -> Envelope:
    """Check an envelope (400s name the field) and work out path and body for its protocol.

    ``pool``: neither a target URL nor an instance may be given (balanced over all of the
    caller's running instances).
    """
    protocol = protocol.strip().lower()
    if protocol not in PROTOCOLS:
        raise InvalidArgumentError(
            f"unsupported protocol {protocol[:20]!r}; use one of {', '.join(PROTOCOLS)}",
            field="protocol",
        )
    method = method.strip().upper() or "GET"
    if method not in METHOD_NAMES:
        raise InvalidArgumentError(
            f"method must be one of {', '.join(METHOD_NAMES)}", field="method"
        )
    if target_url is not None and instance_id is not None:
        raise InvalidArgumentError("give target_url or instance_id, not both", field="target_url")
    if target_url is None and instance_id is None and not pool:
        raise InvalidArgumentError(
            "give exactly one of target_url or instance_id", field="target_url"
        )
    full_path, value = _protocol_path(protocol, path, model, body)
    out_headers = dict(headers)
    payload = _encode_body(value, out_headers)
    if target_url is not None and protocol in {"openinference", "mcp"}:
        target_url = _with_path(target_url, full_path)
    path_only, _, query = full_path.partition("?")
    return Envelope(method, out_headers, payload, target_url, instance_id, path_only, query)


async def send(
    runtime: ProxyRuntime,
    user_id: str,
    envelope: Envelope,
    timeout: float | None,
    caller: Caller | None = None,
) -> Upstream:
    """Forward a prepared envelope for ``user_id``; a refused target is logged, then raised.

    ``caller``: who sent it, for their usage session."""
    try:
        return await runtime.forward(
            user_id,
            method=envelope.method,
            headers=envelope.headers,
            body=envelope.body,
            timeout=timeout,
            target_url=envelope.target_url,
            instance_id=envelope.instance_id,
            path=envelope.path,
            query=envelope.query,
            caller=caller,
        )
    except TargetRefusedError as exc:
        refused(user_id, exc, envelope.target_url or envelope.path)
        raise


def refused(user_id: str, exc: TargetRefusedError, url: str | None) -> None:
    log.warning("proxy target refused for user %s: %s (%s)", user_id, exc.reason, (url or "")[:200])


def _encode_body(value: Any, headers: dict[str, str]) -> bytes | None:
    if value is NO_BODY or value is None or value is UNSET:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return value.encode()
    headers.setdefault("Content-Type", "application/json")
    return json.dumps(value, separators=(",", ":")).encode()


def _protocol_path(
    protocol: str, path: str | None, model: str | None, body: Any
) -> tuple[str, Any]:
    """The path and body an envelope's protocol implies (OIP v2 infer, MCP JSON-RPC)."""
    if protocol == "openinference":
        if path:
            if not path.startswith("/v2"):
                raise InvalidArgumentError("openinference paths start with /v2", field="path")
            return path, body
        model = model or (
            body.get("model_name") or body.get("model") if isinstance(body, dict) else None
        )
        if not model:
            raise InvalidArgumentError(
                "openinference needs the model name (model, or body.model_name)", field="model"
            )
        return f"/v2/models/{model}/infer", body
    if protocol == "mcp":
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            raise InvalidArgumentError("mcp needs a JSON-RPC body with a method", field="body")
        if body.get("jsonrpc", "2.0") != "2.0":
            raise InvalidArgumentError("mcp speaks JSON-RPC 2.0", field="body")
        rpc = {"jsonrpc": "2.0", **body}
        rpc.setdefault("id", str(uuid.uuid4()))
        return path or "/mcp", rpc
    return path or "/", body


def _with_path(url: str, path: str) -> str:
    """Put the protocol path on a base ``target_url`` that has none of its own."""
    parts = urlsplit(url)
    if parts.path not in {"", "/"}:
        return url
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
