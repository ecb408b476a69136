"""The user CLI's gRPC transport (``aiserve-gpuproxy-client --grpc``).

``GrpcApi`` answers the CLI's REST calls (``get``/``post``/``delete``/``_send`` on API paths)
through the matching RPCs and returns the REST JSON shapes (``views``), so every command
prints the same over either transport. A path without an RPC is an error, never a silent
fall-back to HTTP.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import ssl
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import unquote

from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from interfaces.cli.client import Api, ApiError
from interfaces.grpc import views
from interfaces.grpc.generated import gpuproxy as pb

T = TypeVar("T")
DEFAULT_TIMEOUT = 30.0
HTTP_EQUIVALENT = {
    Status.INVALID_ARGUMENT: 400,
    Status.UNAUTHENTICATED: 401,
    Status.FAILED_PRECONDITION: 402,
    Status.PERMISSION_DENIED: 403,
    Status.NOT_FOUND: 404,
    Status.ALREADY_EXISTS: 409,
    Status.ABORTED: 409,
    Status.RESOURCE_EXHAUSTED: 429,
    Status.UNAVAILABLE: 503,
    Status.DEADLINE_EXCEEDED: 504,
}
INSTANCE = re.compile(r"^/api/v1/gpu/instances/(?P<provider>[^/]+)/(?P<id>[^/]+)$")
RESERVATION = re.compile(r"^/api/v1/gpu/reservations/(?P<id>[^/]+)$")


def parse_target(target: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too); the port defaults to 9090."""
    host, sep, port = target.strip().rpartition(":")
    if not sep or "]" in port:
        host, port = target.strip(), "9090"
    host = host.strip("[]") or "localhost"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ApiError(2, f"--grpc-target {target!r} is not HOST:PORT")
    return host, int(port)


class GrpcApi(Api):
    """The CLI's ``Api`` over gRPC (one channel, its own event loop)."""

    def __init__(
        self,
        target: str,
        key: str | None,
        *,
        debug: bool = False,
        tls: bool = False,
        ca_file: str | None = None,
    ) -> None:  # no HTTP client: every call goes through the channel
        self.target = target
        self.debug = debug
        self.host, self.port = parse_target(target)
        self.metadata = {"x-api-key": key} if key else {}
        context: ssl.SSLContext | None = None
        if tls or ca_file:
            context = ssl.create_default_context(cafile=ca_file)
            context.set_alpn_protocols(["h2"])
        self._loop = asyncio.new_event_loop()
        self.channel = self._loop.run_until_complete(self._open(context))
        self.stub = pb.GpuProxyServiceStub(self.channel, metadata=self.metadata)

    async def _open(self, context: ssl.SSLContext | None) -> Channel:
        return Channel(self.host, self.port, ssl=context)

    def close(self) -> None:
        self.channel.close()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def _call(self, name: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            result = self._loop.run_until_complete(call())
        except GRPCError as exc:
            status = HTTP_EQUIVALENT.get(exc.status, 500)
            raise ApiError(status, f"{exc.status.name}: {exc.message or name}") from None
        except (TimeoutError, OSError) as exc:
            raise ApiError(0, f"cannot reach {self.target} (gRPC): {exc or 'timed out'}") from None
        if self.debug:
            print(f"gRPC {name} -> OK", file=sys.stderr)
        return result

    # -------------------------------------------------------- the CLI's REST calls

    def get(self, path: str, **params: Any) -> Any:
        return self._send("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(
        self,
        path: str,
        body: Any,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        return self._send("POST", path, json=body, headers=headers or {}, timeout=timeout)

    def delete(self, path: str) -> Any:
        return self._send("DELETE", path)

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {k.lower(): v for k, v in (kwargs.get("headers") or {}).items()}
        body: dict[str, Any] = kwargs.get("json") or {}
        routes: dict[str, Callable[[], Any]] = {
            "GET": lambda: self._get(path, kwargs.get("params") or {}),
            "POST": lambda: self._post(path, body, headers, kwargs.get("timeout")),
            "PUT": lambda: self._put(path, body),
            "DELETE": lambda: self._delete(path),
        }
        answer = routes[method]() if method in routes else None
        if answer is None:
            raise ApiError(2, f"{method} {path} has no gRPC RPC: run this command without --grpc")
        return answer

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        simple: dict[str, Callable[[], Any]] = {
            "/api/v1/billing/credits": self._credits,
            "/api/v1/billing/transactions": lambda: self._transactions(params),
            "/api/v1/guardrails/spending": self._spending,
            "/api/v1/gpu/instances": lambda: self._catalog(params),
            "/api/v1/gpu/rentals": self._rentals,
            "/api/v1/loadbalancer/strategy": self._strategy,
            "/api/v1/loadbalancer/load": lambda: self._load(params.get("type", "all")),
            "/api/v1/billing/payments": self._payments,
        }
        if path in simple:
            return simple[path]()
        if match := INSTANCE.match(path):
            request = pb.GetGpuInstanceRequest(
                provider=unquote(match["provider"]), instance_id=unquote(match["id"])
            )
            found = self._call("GetGPUInstance", lambda: self.stub.get_gpu_instance(request))
            return {"instance": views.rental_json(found.rental)}
        return None

    def _post(
        self, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float | None
    ) -> Any:
        if path == "/api/v1/gpu/instances/reserve":
            return self._reserve(body, timeout or DEFAULT_TIMEOUT)
        if path == "/api/v1/billing/payment":
            return self._pay(body, headers)
        if match := INSTANCE.match(path):
            return self._rent(match["provider"], match["id"], body, headers)
        return None

    def _put(self, path: str, body: dict[str, Any]) -> Any:
        if path != "/api/v1/loadbalancer/strategy":
            return None
        request = pb.SetLoadBalancerStrategyRequest(strategy=str(body.get("strategy", "")))
        answer = self._call(
            "SetLoadBalancerStrategy", lambda: self.stub.set_load_balancer_strategy(request)
        )
        return {"strategy": answer.strategy, "message": "Load balancing strategy updated"}

    def _delete(self, path: str) -> Any:
        if match := INSTANCE.match(path):
            request = pb.DestroyGpuInstanceRequest(
                provider=unquote(match["provider"]), instance_id=unquote(match["id"])
            )
            gone = self._call("DestroyGPUInstance", lambda: self.stub.destroy_gpu_instance(request))
            return {"instance": views.rental_json(gone.rental)}
        if match := RESERVATION.match(path):
            ask = pb.ReleaseReservationRequest(reservation_id=unquote(match["id"]))
            released = self._call("ReleaseReservation", lambda: self.stub.release_reservation(ask))
            return {"reservation": views.reservation_json(released.reservation)}
        return None

    # ------------------------------------------------------------------ RPCs

    def _credits(self) -> Any:
        found = self._call("GetCredits", lambda: self.stub.get_credits(pb.GetCreditsRequest()))
        return views.credits_json(found)

    def _transactions(self, params: dict[str, Any]) -> Any:
        request = pb.GetTransactionsRequest(
            limit=int(params.get("limit") or 0), before_id=int(params.get("before") or 0)
        )
        page = self._call("GetTransactions", lambda: self.stub.get_transactions(request))
        payments = [] if request.before_id else self._payments(request.limit or 50)["payments"]
        return {
            "payments": payments,
            "transactions": [views.transaction_json(t) for t in page.transactions],
            "next_before": page.next_before_id or None,
        }

    def _payments(self, limit: int = 100) -> Any:
        request = pb.ListPaymentsRequest(limit=min(limit, 100))
        found = self._call("ListPayments", lambda: self.stub.list_payments(request))
        rows = [views.payment_row_json(p) for p in found.payments]
        return {"payments": rows, "count": len(rows)}

    def _spending(self) -> Any:
        found = self._call(
            "GetSpendingInfo", lambda: self.stub.get_spending_info(pb.GetSpendingInfoRequest())
        )
        return views.spending_json(found)

    def _catalog(self, params: dict[str, Any]) -> Any:
        request = pb.ListGpuInstancesRequest(
            provider=params.get("provider") or "",
            min_vram=float(params.get("min_vram") or 0),
            max_price=float(Decimal(params.get("max_price") or 0)),
            gpu_model=params.get("gpu_model") or "",
            region=params.get("region") or "",
            num_gpus=int(params.get("num_gpus") or 0),
            limit=int(params.get("limit") or 0),
        )
        found = self._call("ListGPUInstances", lambda: self.stub.list_gpu_instances(request))
        return {
            "offers": [views.offer_json(o) for o in found.instances],
            "count": found.total_count,
            "errors": dict(found.errors),
        }

    def _rentals(self) -> Any:
        found = self._call("ListRentals", lambda: self.stub.list_rentals(pb.ListRentalsRequest()))
        return {"rentals": [views.rental_json(r) for r in found.rentals]}

    def _strategy(self) -> Any:
        found = self._call(
            "GetLoadBalancerStrategy",
            lambda: self.stub.get_load_balancer_strategy(pb.GetLoadBalancerStrategyRequest()),
        )
        return {"strategy": found.strategy, "available": list(found.available)}

    def _load(self, kind: str) -> Any:
        found = self._call(
            "GetLoadInfo", lambda: self.stub.get_load_info(pb.GetLoadInfoRequest(type=kind))
        )
        return views.load_json(found, kind)

    def _rent(
        self, provider: str, offer: str, body: dict[str, Any], headers: dict[str, str]
    ) -> Any:
        request = pb.CreateGpuInstanceRequest(
            provider=unquote(provider),
            instance_id=unquote(offer),
            image=str(body.get("image", "")),
            ports=[int(p) for p in body.get("ports", [])],
            idempotency_key=headers.get("idempotency-key", ""),
        )
        made = self._call("CreateGPUInstance", lambda: self.stub.create_gpu_instance(request))
        return {"instance": views.rental_json(made.rental)}

    def _reserve(self, body: dict[str, Any], timeout: float) -> Any:
        request = pb.ReserveGpUsRequest(
            count=int(body["count"]),
            provider=str(body.get("provider") or ""),
            min_vram=float(body.get("min_vram") or 0),
            max_price=float(Decimal(str(body.get("max_price") or 0))),
            gpu_model=str(body.get("gpu_model") or ""),
            image=str(body.get("image") or ""),
        )
        made = self._call("ReserveGPUs", lambda: self.stub.reserve_gp_us(request, timeout=timeout))
        return {"reservation": views.reservation_json(made.reservation)}

    def _pay(self, body: dict[str, Any], headers: dict[str, str]) -> Any:
        request = pb.CreatePaymentRequest(
            amount=float(Decimal(str(body.get("amount", "0")))),
            currency=str(body.get("currency") or "USD"),
            provider=headers.get("x-billing", ""),
            payment_method=headers.get("x-preferred-payment", ""),
        )
        metadata = dict(self.metadata)
        if "idempotency-key" in headers:
            metadata["idempotency-key"] = headers["idempotency-key"]
        made = self._call(
            "CreatePayment", lambda: self.stub.create_payment(request, metadata=metadata)
        )
        return views.payment_json(made)

    def proxy(self, envelope: dict[str, Any], timelimit: float | None) -> tuple[int, str, str]:
        """``ProxyRequest``: (status, instance id, body text) as the CLI prints them."""
        headers = {str(k): str(v) for k, v in envelope.get("headers", {}).items()}
        body = envelope.get("body")
        has_type = any(k.lower() == "content-type" for k in headers)
        if isinstance(body, str):
            payload = body.encode()
            if not has_type:
                headers["Content-Type"] = "text/plain; charset=utf-8"
        elif body is None:
            payload = b""
        else:
            payload = json.dumps(body, separators=(",", ":")).encode()
            if not has_type:
                headers["Content-Type"] = "application/json"
        request = pb.ProxyRequestMessage(
            protocol=envelope["protocol"],
            target_url=envelope.get("target_url", ""),
            instance_id=envelope.get("instance_id", ""),
            method=envelope.get("method", "POST"),
            headers=headers,
            body=payload,
            timeout=math.ceil(timelimit) if timelimit else 0,
            path=envelope.get("path", ""),
            model=envelope.get("model", ""),
        )
        answer = self._call(
            "ProxyRequest", lambda: self.stub.proxy_request(request, timeout=timelimit)
        )
        return answer.status_code, answer.instance_id, answer.body.decode("utf-8", "replace")
