"""The sandbox marketplace: a built-in, offline GPU provider whose instances are real endpoints.

``SandboxProvider`` implements ``domain.marketplace.GpuProvider`` with a fixed, realistic
catalog (common GPU models, VRAM, USD/hour prices as integer micro-USD, locations,
reliability). Renting an offer starts a real HTTP server on ``127.0.0.1`` with an OS-assigned
port, serving:

- Open Inference Protocol v2 (KServe v2 REST): ``GET /v2``, ``/v2/health/live``,
  ``/v2/health/ready``, ``GET /v2/models/demo[/versions/1]``, ``.../ready`` and
  ``POST /v2/models/demo[/versions/1]/infer`` for the demo model ``demo``: ``y = 2x + 1``
  element-wise on one FP32 tensor of any shape, computed in pure Python. Malformed input is a
  400 with the OIP error body ``{"error": "..."}``; an unknown model is a 404.
- ``GET /health`` and ``/echo`` (any method; ``POST /echo`` returns the method, path, query,
  headers and body it received). ``?delay_ms=N`` waits before answering and ``?status=N``
  answers with that status, so proxies can be tested against slow or failing backends.
- ``GET /stream?chunks=N&delay_ms=M``: a chunked response of ``N`` lines.
- ``POST /mcp``: MCP-style JSON-RPC 2.0 (``initialize``, ``ping``, ``tools/list``,
  ``tools/call``) with one tool, ``echo``.

Every response carries ``x-sandbox-instance-id`` so load-balancing tests can see who answered.

How the servers run: all instances of one provider share a single background thread running
its own asyncio event loop; each instance is one ``uvicorn.Server`` task in that loop, started
on a socket bound beforehand (so the port is known at once; created with ``IPPROTO_TCP`` so
asyncio sets ``TCP_NODELAY`` on accepted connections) with lifespan, logging config,
websockets and proxy headers off. uvicorn's INFO lifecycle lines from that thread are dropped
(they read like restarts of the hosting server); each start logs ``sandbox instance ID
serving on 127.0.0.1:PORT`` instead. Callers in any event loop await the start and stop through
``asyncio.run_coroutine_threadsafe`` + ``asyncio.wrap_future``, so instances survive the
caller's loop and 16+ of them cost one thread. ``destroy`` closes the listening socket at once
and waits (bounded) for uvicorn's graceful shutdown; ``aclose`` destroys everything and stops
the thread.

Status: ``provisioning`` until ``provisioning_delay`` seconds of the injected ``clock`` have
passed since the rent, then ``running`` with host and port (``started_at`` is that moment);
``terminated`` after ``destroy``. Injected failures (``fail_rate``, ``fail_on``) either make
``rent`` raise ``OfferUnavailableError`` (mode ``"rent"``), send the instance to ``failed`` when
provisioning ends (``"failed"``), or keep it provisioning forever (``"stuck"``).

Offers have unlimited capacity: renting one does not take it off the catalog.

Across replicas (docs/adr/0028): given a ``SandboxRegistry`` (PostgreSQL), the provider writes a
row per instance it rents and a heartbeat thread (``sandbox-heartbeat``) keeps its rows fresh,
publishes state changes and carries out destroys other replicas asked for. Every replica's
provider then answers ``status``/``list_instances``/``destroy``/``endpoint`` for instances
another process owns from their rows: ``terminated`` once destroyed (at once, even before the
owner has stopped the server) or once the owner's heartbeat is older than the registry's
timeout (the owner died). Instances bind ``bind_host`` and are advertised as
``advertise_host`` (e.g. ``0.0.0.0`` and the replica's name in a compose stack). Without a
registry (the embedded SQLite default) everything stays in this process, as before.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
import math
import random
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs

import uvicorn

from domain.marketplace import (
    InstanceNotFoundError,
    InvalidProviderRequestError,
    Offer,
    OfferQuery,
    OfferUnavailableError,
    ProviderInstance,
    ProviderUnavailableError,
    RentRequest,
)
from infrastructure.providers.sandbox_registry import SandboxRegistry, SandboxRow

PROVIDER_NAME = "sandbox"
DEMO_MODEL = "demo"
DEMO_MODEL_VERSION = "1"
SANDBOX_HOST = "127.0.0.1"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_DELAY_MS = 30_000
MAX_STREAM_CHUNKS = 10_000

SERVER_THREAD = "sandbox-servers"
HEARTBEAT_THREAD = "sandbox-heartbeat"
UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - names, not a bind
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
log = logging.getLogger(__name__)

FailureMode = Literal["rent", "failed", "stuck"]
FAILURE_MODES: tuple[FailureMode, ...] = ("rent", "failed", "stuck")

T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


def _usd(amount: str) -> int:
    """``"0.35"`` → 350_000 micro-USD, exactly (no float rounding)."""
    whole, _, frac = amount.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


# (offer_id, gpu_model, num_gpus, vram_gb per GPU, USD/hour for the whole offer, location,
#  reliability, cpu cores, RAM GB, disk GB)
_CATALOG: tuple[tuple[str, str, int, float, str, str, float, int, int, int], ...] = (
    ("sbx-a4000-1x-de", "RTX A4000", 1, 16.0, "0.17", "Germany, DE", 0.991, 8, 32, 100),
    ("sbx-3090-1x-us", "RTX 3090", 1, 24.0, "0.22", "Texas, US", 0.982, 8, 32, 150),
    ("sbx-3090-2x-pl", "RTX 3090", 2, 24.0, "0.44", "Poland, PL", 0.975, 16, 64, 250),
    ("sbx-a5000-1x-ca", "RTX A5000", 1, 24.0, "0.26", "Quebec, CA", 0.994, 8, 48, 150),
    ("sbx-4090-1x-us", "RTX 4090", 1, 24.0, "0.35", "Ohio, US", 0.989, 16, 64, 200),
    ("sbx-4090-1x-no", "RTX 4090", 1, 24.0, "0.39", "Norway, NO", 0.997, 16, 64, 200),
    ("sbx-4090-2x-us", "RTX 4090", 2, 24.0, "0.70", "California, US", 0.986, 32, 128, 500),
    ("sbx-4090-4x-se", "RTX 4090", 4, 24.0, "1.40", "Sweden, SE", 0.993, 64, 256, 1000),
    ("sbx-4090-8x-us", "RTX 4090", 8, 24.0, "2.80", "Virginia, US", 0.990, 128, 512, 2000),
    ("sbx-l4-1x-sg", "L4", 1, 24.0, "0.43", "Singapore, SG", 0.995, 8, 32, 100),
    ("sbx-a40-1x-fi", "A40", 1, 48.0, "0.40", "Finland, FI", 0.996, 16, 96, 250),
    ("sbx-a6000-1x-us", "RTX A6000", 1, 48.0, "0.49", "Utah, US", 0.992, 16, 96, 250),
    ("sbx-a6000-2x-nl", "RTX A6000", 2, 48.0, "0.98", "Netherlands, NL", 0.995, 32, 192, 500),
    ("sbx-l40s-1x-us", "L40S", 1, 48.0, "0.79", "Oregon, US", 0.998, 16, 128, 500),
    ("sbx-l40s-4x-de", "L40S", 4, 48.0, "3.16", "Germany, DE", 0.997, 64, 512, 2000),
    ("sbx-a100-40-1x-us", "A100 PCIe 40GB", 1, 40.0, "0.75", "Texas, US", 0.993, 16, 128, 500),
    ("sbx-a100-80-1x-us", "A100 SXM4 80GB", 1, 80.0, "1.29", "Virginia, US", 0.996, 32, 256, 1000),
    ("sbx-a100-80-2x-jp", "A100 SXM4 80GB", 2, 80.0, "2.58", "Tokyo, JP", 0.994, 64, 512, 2000),
    ("sbx-a100-80-8x-us", "A100 SXM4 80GB", 8, 80.0, "10.32", "Iowa, US", 0.998, 192, 1536, 8000),
    ("sbx-h100p-1x-ca", "H100 PCIe 80GB", 1, 80.0, "1.99", "Quebec, CA", 0.997, 24, 188, 1000),
    ("sbx-h100s-1x-us", "H100 SXM 80GB", 1, 80.0, "2.49", "Texas, US", 0.998, 26, 250, 1000),
    ("sbx-h100s-8x-is", "H100 SXM 80GB", 8, 80.0, "19.92", "Iceland, IS", 0.999, 208, 2000, 16000),
    ("sbx-h200-1x-us", "H200 141GB", 1, 141.0, "3.49", "Virginia, US", 0.997, 32, 256, 2000),
)


def catalog() -> list[Offer]:
    """Every sandbox offer, fresh objects (callers may not mutate shared metadata)."""
    return [
        Offer(
            provider=PROVIDER_NAME,
            offer_id=offer_id,
            gpu_model=gpu_model,
            num_gpus=num_gpus,
            vram_gb=vram_gb,
            price_per_hour=_usd(usd),
            location=location,
            reliability=reliability,
            metadata={
                "cpu_cores": cpu_cores,
                "ram_gb": ram_gb,
                "disk_gb": disk_gb,
                "cuda_version": "12.4",
                "interruptible": False,
                "demo_model": DEMO_MODEL,
                "simulated": True,
            },
        )
        for (
            offer_id,
            gpu_model,
            num_gpus,
            vram_gb,
            usd,
            location,
            reliability,
            cpu_cores,
            ram_gb,
            disk_gb,
        ) in _CATALOG
    ]


# --------------------------------------------------------------------------------------------
# The instance's HTTP application (raw ASGI, pure Python)
# --------------------------------------------------------------------------------------------


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()


async def _send_bytes(
    send: Send, status: int, body: bytes, content_type: str = "application/json"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_json(send: Send, status: int, payload: Any) -> None:
    await _send_bytes(send, status, _json_bytes(payload))


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _HttpError(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _HttpError(400, f"request body is not valid JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _query_int(query: Mapping[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _HttpError(400, f"query parameter {name!r} must be an integer") from None
    if not low <= value <= high:
        raise _HttpError(400, f"query parameter {name!r} must be between {low} and {high}")
    return value


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


_END = object()


def _tensor_values(tensor: dict[str, Any]) -> tuple[str, list[int], list[float]]:
    """Validate one OIP v2 FP32 input tensor → (name, shape, flat values)."""
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise _HttpError(400, "input tensor needs a 'name'")
    if tensor.get("datatype") != "FP32":
        raise _HttpError(
            400, f"input '{name}': datatype must be FP32, got {tensor.get('datatype')!r}"
        )
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise _HttpError(400, f"input '{name}': shape must be a non-empty list of integers >= 0")
    if "data" not in tensor:
        raise _HttpError(400, f"input '{name}': missing 'data'")
    values = _flatten(tensor["data"])
    expected = math.prod(shape)
    if len(values) != expected:
        raise _HttpError(
            400,
            f"input '{name}': shape {shape} needs {expected} elements, data has {len(values)}",
        )
    floats: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _HttpError(400, f"input '{name}': FP32 data must be numbers, got {value!r}")
        floats.append(float(value))
    return name, shape, floats


def demo_infer(payload: Any) -> dict[str, Any]:
    """The demo model: ``y = 2x + 1`` on one FP32 tensor; raises ``_HttpError(400)`` if invalid."""
    if not isinstance(payload, dict):
        raise _HttpError(400, "inference request must be a JSON object")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise _HttpError(400, "model 'demo' expects exactly one input tensor in 'inputs'")
    name, shape, values = _tensor_values(inputs[0])
    result = [2.0 * x + 1.0 for x in values]
    if not all(math.isfinite(y) for y in result):
        raise _HttpError(400, f"input '{name}': values out of range")
    wanted = payload.get("outputs")
    if wanted is not None and (
        not isinstance(wanted, list)
        or not all(isinstance(o, dict) and o.get("name") == "output" for o in wanted)
    ):
        raise _HttpError(400, "model 'demo' has one output, named 'output'")
    response: dict[str, Any] = {
        "model_name": DEMO_MODEL,
        "model_version": DEMO_MODEL_VERSION,
        "outputs": [{"name": "output", "datatype": "FP32", "shape": shape, "data": result}],
    }
    request_id = payload.get("id")
    if isinstance(request_id, str):
        response["id"] = request_id
    return response


DEMO_MODEL_METADATA: dict[str, Any] = {
    "name": DEMO_MODEL,
    "versions": [DEMO_MODEL_VERSION],
    "platform": "sandbox_python",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1]}],
}

MCP_PROTOCOL_VERSION = "2025-03-26"
MCP_ECHO_TOOL: dict[str, Any] = {
    "name": "echo",
    "description": "Returns the text it is given.",
    "inputSchema": {
        "type": "object",
        "properties": {"text": {"type": "string", "description": "Text to echo back"}},
        "required": ["text"],
    },
}


def _rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def mcp_handle(message: Any, instance_id: str) -> dict[str, Any] | None:
    """One JSON-RPC 2.0 message → its response, or ``None`` for a notification."""
    if (
        not isinstance(message, dict)
        or message.get("jsonrpc") != "2.0"
        or not isinstance(message.get("method"), str)
    ):
        request_id = message.get("id") if isinstance(message, dict) else None
        return _rpc_error(request_id, -32600, "Invalid Request")
    if "id" not in message:
        return None  # notification (e.g. notifications/initialized): no answer
    request_id = message["id"]
    method: str = message["method"]
    params = message.get("params") or {}
    if not isinstance(params, dict):
        return _rpc_error(request_id, -32602, "params must be an object")
    result: dict[str, Any]
    if method == "initialize":
        result = {
            "protocolVersion": MCP_PROTOCOL_VERSION,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "sandbox-mcp", "version": "1.0.0"},
            "instructions": f"Sandbox GPU instance {instance_id}",
        }
    elif method == "ping":
        result = {}
    elif method == "tools/list":
        result = {"tools": [MCP_ECHO_TOOL]}
    elif method == "tools/call":
        return _mcp_tools_call(request_id, params)
    else:
        return _rpc_error(request_id, -32601, f"Method not found: {method}")
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _mcp_tools_call(request_id: Any, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("name") != "echo":
        return _rpc_error(request_id, -32602, f"Unknown tool: {params.get('name')!r}")
    arguments = params.get("arguments") or {}
    text = arguments.get("text") if isinstance(arguments, dict) else None
    if not isinstance(text, str):
        return _rpc_error(request_id, -32602, "echo needs a string argument 'text'")
    result = {"content": [{"type": "text", "text": text}], "isError": False}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


class InstanceApp:
    """The ASGI application one sandbox instance serves."""

    def __init__(self, instance_id: str, label: str, ready: Callable[[], bool]) -> None:
        self.instance_id = instance_id
        self.label = label
        self._ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except _HttpError as exc:
            await _send_json(send, exc.status, {"error": exc.message})

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/") or "/"
        if path == "/health":
            self._allow(method, "GET")
            await _send_json(
                send, 200, {"status": "ok", "instance_id": self.instance_id, "label": self.label}
            )
        elif path == "/echo" or path.startswith("/echo/"):
            await self._echo(scope, receive, send)
        elif path == "/stream":
            self._allow(method, "GET")
            await self._stream(scope, send)
        elif path == "/mcp":
            self._allow(method, "POST")
            await self._mcp(receive, send)
        elif path == "/v2" or path.startswith("/v2/"):
            await self._oip(method, path, receive, send)
        elif path == "/":
            self._allow(method, "GET")
            await _send_json(
                send,
                200,
                {
                    "provider": PROVIDER_NAME,
                    "instance_id": self.instance_id,
                    "label": self.label,
                    "routes": ["/health", "/echo", "/stream", "/mcp", "/v2"],
                },
            )
        else:
            raise _HttpError(404, f"no route for {path}")

    @staticmethod
    def _allow(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise _HttpError(405, f"method {method} not allowed; use {', '.join(allowed)}")

    async def _echo(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        delay_ms = _query_int(query, "delay_ms", 0, 0, MAX_DELAY_MS)
        status = _query_int(query, "status", 200, 200, 599)
        body = await _read_body(receive)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        payload: dict[str, Any] = {
            "instance_id": self.instance_id,
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
        }
        try:
            payload["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            payload["body"] = None
            payload["body_base64"] = base64.b64encode(body).decode("ascii")
        try:
            payload["json"] = json.loads(body, parse_constant=_reject_constant) if body else None
        except (ValueError, UnicodeDecodeError):
            payload["json"] = None
        await _send_json(send, status, payload)

    async def _stream(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        chunks = _query_int(query, "chunks", 5, 0, MAX_STREAM_CHUNKS)
        delay_ms = _query_int(query, "delay_ms", 0, 0, MAX_DELAY_MS)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain; charset=utf-8")],
            }
        )
        for index in range(chunks):
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            line = f"chunk {index} from {self.instance_id}\n".encode()
            await send({"type": "http.response.body", "body": line, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _mcp(self, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        try:
            message = json.loads(body, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError):
            await _send_json(send, 400, _rpc_error(None, -32700, "Parse error"))
            return
        if isinstance(message, list):
            if not message:
                await _send_json(send, 400, _rpc_error(None, -32600, "Invalid Request"))
                return
            answers = [a for m in message if (a := mcp_handle(m, self.instance_id)) is not None]
            if answers:
                await _send_json(send, 200, answers)
            else:
                await _send_bytes(send, 202, b"")
            return
        answer = mcp_handle(message, self.instance_id)
        if answer is None:
            await _send_bytes(send, 202, b"")
        else:
            status = 400 if answer.get("error", {}).get("code") == -32600 else 200
            await _send_json(send, status, answer)

    async def _oip(self, method: str, path: str, receive: Receive, send: Send) -> None:
        parts = path.split("/")[2:]  # after "", "v2"
        if not parts:
            self._allow(method, "GET")
            await _send_json(
                send,
                200,
                {"name": "sandbox-oip", "version": "1.0.0", "extensions": []},
            )
            return
        if parts == ["health", "live"]:
            self._allow(method, "GET")
            await _send_json(send, 200, {"live": True})
            return
        if parts == ["health", "ready"]:
            self._allow(method, "GET")
            ready = self._ready()
            await _send_json(send, 200 if ready else 503, {"ready": ready})
            return
        if len(parts) < 2 or parts[0] != "models":
            raise _HttpError(404, f"no route for {path}")
        name, rest = parts[1], parts[2:]
        if name != DEMO_MODEL:
            raise _HttpError(404, f"model '{name}' not found; this server has '{DEMO_MODEL}'")
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != DEMO_MODEL_VERSION:
                version = rest[1] if len(rest) > 1 else ""
                raise _HttpError(404, f"model '{name}' has no version '{version}'")
            rest = rest[2:]
        if not rest:
            self._allow(method, "GET")
            await _send_json(send, 200, DEMO_MODEL_METADATA)
        elif rest == ["ready"]:
            self._allow(method, "GET")
            ready = self._ready()
            await _send_json(send, 200 if ready else 503, {"name": name, "ready": ready})
        elif rest == ["infer"]:
            self._allow(method, "POST")
            payload = _parse_json(await _read_body(receive))
            await _send_json(send, 200, demo_infer(payload))
        else:
            raise _HttpError(404, f"no route for {path}")


# --------------------------------------------------------------------------------------------
# The background loop that hosts every instance's server
# --------------------------------------------------------------------------------------------


class _QuietLifecycle(logging.Filter):
    """Drops uvicorn's INFO lifecycle lines (``Started server process``, ``Shutting down``…)
    when logged from the sandbox thread: one set per instance, they read like restarts of the
    hosting server. Warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.threadName != SERVER_THREAD


_QUIET_LIFECYCLE = _QuietLifecycle()


class _ServerLoop:
    """One daemon thread running an asyncio loop; coroutines are submitted from any loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                logging.getLogger("uvicorn.error").addFilter(_QUIET_LIFECYCLE)  # idempotent
                loop = asyncio.new_event_loop()
                started = threading.Event()
                thread = threading.Thread(
                    target=self._run, args=(loop, started), name=SERVER_THREAD, daemon=True
                )
                thread.start()
                started.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure())

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------
# The provider
# --------------------------------------------------------------------------------------------


@dataclass
class _Instance:
    instance_id: str
    offer: Offer
    request: RentRequest
    created_at: float
    failure: FailureMode | None = None
    port: int | None = None
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None
    terminated: bool = False
    sock: socket.socket | None = field(default=None, repr=False)
    stop_future: concurrent.futures.Future[None] | None = field(default=None, repr=False)


async def _start_server(instance: _Instance) -> None:
    """Runs in the server loop: serve ``instance`` on its socket; return once listening.

    The serve task is recorded on the instance before anything is awaited, so a rent that is
    cancelled half-way still leaves a server that ``destroy`` can stop.
    """
    server, sock = instance.server, instance.sock
    if server is None or sock is None:
        return
    if server.should_exit:  # destroyed before it could start
        sock.close()
        return
    task = asyncio.create_task(server.serve(sockets=[sock]))
    instance.task = task
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            sock.close()
            exc = None if task.cancelled() else task.exception()
            raise RuntimeError(f"sandbox server did not start: {exc!r}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("sandbox server did not start within 10 s")
        await asyncio.sleep(0.002)


async def _stop_server(instance: _Instance) -> None:
    """Runs in the server loop: refuse new connections now, then let uvicorn shut down."""
    server, task = instance.server, instance.task
    if server is None:
        return
    server.should_exit = True
    if task is None:  # never started: _start_server will not start it either
        if instance.sock is not None:
            instance.sock.close()
        return
    for listener in getattr(server, "servers", []):
        listener.close()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=5)
    except TimeoutError:
        server.force_exit = True
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
    except Exception:  # noqa: S110 - a server that crashed is stopped all the same
        pass


class SandboxProvider:
    """A simulated GPU marketplace; see the module docstring."""

    def __init__(
        self,
        *,
        provisioning_delay: float = 2.0,
        clock: Callable[[], float] = time.time,
        fail_rate: float = 0.0,
        fail_on: Mapping[int | str, FailureMode] | Iterable[int | str] = (),
        failure_mode: FailureMode = "rent",
        seed: int | None = None,
        search_delay: float = 0.0,
        max_instances: int = 256,
        registry: SandboxRegistry | None = None,
        bind_host: str = SANDBOX_HOST,
        advertise_host: str | None = None,
    ) -> None:
        """
        ``fail_rate``: probability (0..1) that a rent fails, drawn from ``random.Random(seed)``.
        ``fail_on``: rents that fail for sure — an ``int`` is the 1-based ordinal of the rent
        call (``{3}``: the third rent fails), a ``str`` an offer id (every rent of it fails); as
        a mapping, each with its own mode. ``failure_mode`` is the mode for ``fail_rate`` and
        for a plain collection ``fail_on``: ``"rent"`` raises ``OfferUnavailableError``,
        ``"failed"`` ends provisioning in ``failed``, ``"stuck"`` never leaves provisioning.
        ``registry``: share instances with other replicas (module docstring); ``bind_host``:
        the address instances listen on; ``advertise_host``: how others reach them (default
        ``bind_host``; required when that is ``0.0.0.0``/``::``).
        """
        if provisioning_delay < 0:
            raise ValueError("provisioning_delay must be >= 0")
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be between 0 and 1")
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}")
        self.provisioning_delay = provisioning_delay
        self.fail_rate = fail_rate
        self.failure_mode: FailureMode = failure_mode
        if isinstance(fail_on, Mapping):
            self.fail_on: dict[int | str, FailureMode] = dict(fail_on)
        else:
            self.fail_on = dict.fromkeys(fail_on, failure_mode)
        for mode in self.fail_on.values():
            if mode not in FAILURE_MODES:
                raise ValueError(f"fail_on modes must be among {FAILURE_MODES}")
        self.search_delay = search_delay
        self.max_instances = max_instances
        self.registry = registry
        self.bind_host = bind_host
        self.advertise_host = advertise_host or bind_host
        if self.advertise_host in UNSPECIFIED_HOSTS:
            raise ValueError("advertise_host is required when instances bind every address")
        self._published: dict[str, tuple[str, str]] = {}
        self._unmarked: set[str] = set()  # destroyed here, row not yet marked terminated
        self._heartbeat: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._clock = clock
        self._rng = random.Random(seed)  # noqa: S311 - failure injection, not cryptography
        self._lock = threading.Lock()
        self._instances: dict[str, _Instance] = {}
        self._rent_calls = 0
        self._servers = _ServerLoop()
        self._offers = {offer.offer_id: offer for offer in catalog()}

    @property
    def name(self) -> str:
        return PROVIDER_NAME

    async def search(self, query: OfferQuery) -> list[Offer]:
        if self.search_delay:
            await asyncio.sleep(self.search_delay)
        offers = [offer for offer in catalog() if query.accepts(offer)]
        offers.sort(key=lambda o: (o.price_per_hour, o.offer_id))
        return offers[: max(query.limit, 0)]

    def _failure_for(self, offer_id: str) -> FailureMode | None:
        with self._lock:
            self._rent_calls += 1
            ordinal = self._rent_calls
            draw = self._rng.random() if self.fail_rate > 0 else 1.0
        if ordinal in self.fail_on:
            return self.fail_on[ordinal]
        if offer_id in self.fail_on:
            return self.fail_on[offer_id]
        if draw < self.fail_rate:
            return self.failure_mode
        return None

    async def rent(self, offer_id: str, request: RentRequest) -> ProviderInstance:
        offer = self._offers.get(offer_id)
        if offer is None:
            raise OfferUnavailableError(PROVIDER_NAME, f"no such offer {offer_id!r}", status=404)
        if not request.label:
            raise InvalidProviderRequestError(PROVIDER_NAME, "label is required", status=422)
        failure = self._failure_for(offer_id)
        if failure == "rent":
            raise OfferUnavailableError(
                PROVIDER_NAME, f"offer {offer_id} was taken (injected failure)", status=410
            )
        instance = _Instance(
            instance_id=f"sbx-{uuid.uuid4().hex[:16]}",
            offer=replace(offer, metadata=dict(offer.metadata)),
            request=request,
            created_at=self._clock(),
            failure=failure,
        )
        if failure is None:
            self._prepare_server(instance)
        with self._lock:
            live = sum(1 for i in self._instances.values() if not i.terminated)
            if live >= self.max_instances:
                if instance.sock is not None:
                    instance.sock.close()
                raise OfferUnavailableError(
                    PROVIDER_NAME, f"sandbox capacity of {self.max_instances} instances reached"
                )
            # Registered before the server starts: if this call is cancelled, the instance
            # still exists and shows up in list_instances (as an orphan would at a real one).
            self._instances[instance.instance_id] = instance
        if failure is None:
            try:
                await self._servers.run(_start_server(instance))
            except Exception as exc:
                await self.destroy(instance.instance_id)
                raise ProviderUnavailableError(
                    PROVIDER_NAME, f"could not start sandbox instance: {exc}"
                ) from exc
            log.info(
                "sandbox instance %s serving on %s:%s",
                instance.instance_id,
                self.advertise_host,
                instance.port,
            )
        view = self._view(instance)
        if self.registry is not None:
            await asyncio.to_thread(self._register, self.registry, instance, view)
        return view

    # Across replicas ------------------------------------------------------------------------

    def _register(
        self, registry: SandboxRegistry, instance: _Instance, view: ProviderInstance
    ) -> None:
        """Write the instance's row (blocking) and make sure the heartbeat runs."""
        try:
            registry.add(
                instance_id=instance.instance_id,
                label=instance.request.label,
                offer_id=instance.offer.offer_id,
                price_per_hour=instance.offer.price_per_hour,
                host=self.advertise_host,
                port=instance.port or 0,
                state=view.status,
                raw_state=view.raw_status,
                started_at=view.started_at,
            )
        except Exception as exc:
            self._terminate_local(instance, wait=10.0)
            raise ProviderUnavailableError(
                PROVIDER_NAME, f"could not register sandbox instance: {exc}"
            ) from exc
        with self._lock:
            self._published[instance.instance_id] = (view.status, view.raw_status)
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat_stop.clear()
                self._heartbeat = threading.Thread(
                    target=self._beat_forever, name=HEARTBEAT_THREAD, daemon=True
                )
                self._heartbeat.start()

    @property
    def heartbeat_interval(self) -> float:
        """How often the owner beats: a fifth of the timeout, so one late beat is no death."""
        return 1.0 if self.registry is None else min(5.0, self.registry.timeout / 5)

    def _beat_forever(self) -> None:
        while not self._heartbeat_stop.wait(self.heartbeat_interval):
            try:
                self.beat()
            except Exception:
                log.warning("sandbox heartbeat failed", exc_info=True)

    def beat(self) -> None:
        """One heartbeat (blocking): refresh the rows, carry out destroys asked for elsewhere,
        publish state changes (provisioning -> running, failed)."""
        if self.registry is None:
            return
        for instance_id in list(self._unmarked):
            self.registry.mark_terminated(instance_id)
            self._unmarked.discard(instance_id)
        for instance_id in self.registry.beat():
            instance = self._instances.get(instance_id)
            if instance is not None:
                log.info("sandbox instance %s destroyed at another replica's request", instance_id)
                self._terminate_local(instance, wait=10.0)
            self.registry.mark_terminated(instance_id)
        with self._lock:
            live = [i for i in self._instances.values() if not i.terminated]
        for instance in live:
            view = self._view(instance)
            if self._published.get(instance.instance_id) != (view.status, view.raw_status):
                self.registry.publish(
                    instance.instance_id, view.status, view.raw_status, view.started_at
                )
                self._published[instance.instance_id] = (view.status, view.raw_status)

    def _terminate_local(self, instance: _Instance, *, wait: float) -> None:
        """Mark one of our instances terminated and stop its server (blocking up to ``wait``)."""
        with self._lock:
            instance.terminated = True
            if instance.stop_future is None and instance.server is not None:
                instance.stop_future = self._servers.submit(_stop_server(instance))
            stop_future = instance.stop_future
        if stop_future is not None:
            with contextlib.suppress(Exception):
                stop_future.result(timeout=wait)

    def _row_view(self, row: SandboxRow) -> ProviderInstance:
        """Another process's instance, as its row says."""
        status, raw = row.state, row.raw_state
        if row.terminated or row.destroy_requested:
            status, raw = "terminated", "destroyed"
        elif row.stale:
            status, raw = "terminated", "gone: its owner process stopped answering"
        running = status == "running"
        return ProviderInstance(
            provider=PROVIDER_NAME,
            instance_id=row.instance_id,
            status=status,
            raw_status=raw,
            label=row.label,
            host=row.host if running else None,
            port=row.port if running else None,
            price_per_hour=row.price_per_hour,
            started_at=row.started_at if running else None,
        )

    def _foreign(self, instance_id: str) -> SandboxRow | None:
        if self.registry is None or instance_id in self._instances:
            return None
        return self.registry.get(instance_id)

    def _prepare_server(self, instance: _Instance) -> None:
        """Bind the socket (the OS picks the port) and build the uvicorn server for it."""
        # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets of a
        # TCP-protocol listener; without it every answer waits ~40 ms for a delayed ACK.
        family = socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.bind((self.bind_host, 0))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise ProviderUnavailableError(PROVIDER_NAME, f"cannot bind a port: {exc}") from exc
        instance.sock = sock
        instance.port = sock.getsockname()[1]
        app = InstanceApp(
            instance.instance_id, instance.request.label, lambda: self._is_ready(instance)
        )
        config = uvicorn.Config(
            app,
            host=self.bind_host,
            port=instance.port,
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="none",
            interface="asgi3",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=1,
            headers=[("x-sandbox-instance-id", instance.instance_id)],
        )
        instance.server = uvicorn.Server(config)

    def _is_ready(self, instance: _Instance) -> bool:
        return (
            not instance.terminated
            and instance.failure is None
            and self._clock() - instance.created_at >= self.provisioning_delay
        )

    def _view(self, instance: _Instance) -> ProviderInstance:
        status, raw = "provisioning", "loading"
        started_at: float | None = None
        host: str | None = None
        port: int | None = None
        ready_at = instance.created_at + self.provisioning_delay
        if instance.terminated:
            status, raw = "terminated", "destroyed"
        elif instance.failure == "stuck":
            status, raw = "provisioning", "loading (stuck)"
        elif self._clock() < ready_at:
            pass
        elif instance.failure == "failed":
            status, raw = "failed", "provisioning failed (injected failure)"
        elif instance.task is None:
            pass  # still starting (a concurrent rent has not finished)
        elif instance.task.done():
            status, raw = "failed", "exited"
        else:
            status, raw = "running", "running"
            host, port, started_at = self.advertise_host, instance.port, ready_at
        return ProviderInstance(
            provider=PROVIDER_NAME,
            instance_id=instance.instance_id,
            status=status,
            raw_status=raw,
            label=instance.request.label,
            host=host,
            port=port,
            price_per_hour=instance.offer.price_per_hour,
            started_at=started_at,
        )

    async def status(self, instance_id: str) -> ProviderInstance:
        instance = self._instances.get(instance_id)
        if instance is None:
            row = await asyncio.to_thread(self._foreign, instance_id)
            if row is None:
                raise InstanceNotFoundError(
                    PROVIDER_NAME, f"no such instance {instance_id!r}", status=404
                )
            return self._row_view(row)
        if self.registry is not None and not instance.terminated:
            row = await asyncio.to_thread(self.registry.get, instance_id)
            if row is not None and row.destroy_requested:  # asked elsewhere: do it now
                await self.destroy(instance_id)
        return self._view(instance)

    async def list_instances(self) -> list[ProviderInstance]:
        with self._lock:
            live = [i for i in self._instances.values() if not i.terminated]
        views = [self._view(i) for i in live]
        if self.registry is not None:
            rows = await asyncio.to_thread(self.registry.live)
            views += [self._row_view(r) for r in rows if r.instance_id not in self._instances]
        return views

    async def destroy(self, instance_id: str) -> None:
        stop_future: concurrent.futures.Future[None] | None = None
        with self._lock:
            instance = self._instances.get(instance_id)
            if instance is not None:
                instance.terminated = True
                if instance.stop_future is None and instance.server is not None:
                    instance.stop_future = self._servers.submit(_stop_server(instance))
                stop_future = instance.stop_future
        if instance is None:
            if self.registry is not None:  # another replica's: its owner stops it
                await asyncio.to_thread(self.registry.request_destroy, instance_id)
            return  # idempotent: unknown or long gone
        if self.registry is not None:
            try:
                await asyncio.to_thread(self.registry.mark_terminated, instance_id)
            except Exception:  # the server stops all the same; the next beat marks the row
                log.warning("could not mark sandbox instance %s terminated", instance_id)
                self._unmarked.add(instance_id)
        if stop_future is not None:
            await asyncio.wrap_future(stop_future)

    async def aclose(self) -> None:
        """Destroy every instance and stop the server thread (the provider can be reused)."""
        ids = list(self._instances)
        await asyncio.gather(*(self.destroy(i) for i in ids))
        self._heartbeat_stop.set()
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            await asyncio.to_thread(heartbeat.join, 10)
        self._servers.stop()

    # Test helpers ---------------------------------------------------------------------------

    def endpoint(self, instance_id: str) -> tuple[str, int] | None:
        """Where the instance listens, even while provisioning (``None`` if it has no server).

        Another replica's instance (with a registry) is read from its row (blocking)."""
        instance = self._instances.get(instance_id)
        if instance is None:
            row = self._foreign(instance_id)
            if row is None or row.gone or not row.port:
                return None
            return row.host, row.port
        if instance.port is None or instance.terminated:
            return None
        return self.advertise_host, instance.port
