"""Prometheus metrics for the gRPC server: calls by method and status code, and latency.

grpclib's server events (``RecvRequest``, ``SendTrailingMetadata``) fire in the task that
serves the call, so a context variable carries each call's start time and method from the one
to the other. Errors are the calls whose ``grpc_code`` is not ``OK``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar

from grpclib.events import RecvRequest, SendTrailingMetadata, listen
from grpclib.server import Server
from prometheus_client import CollectorRegistry, Counter, Histogram

_call: ContextVar[tuple[str, str, float] | None] = ContextVar("gpuproxy_grpc_call", default=None)


def split_method(path: str) -> tuple[str, str]:
    """``/package.Service/Method`` → (``package.Service``, ``Method``)."""
    service, _, method = path.lstrip("/").partition("/")
    return service, method


class GrpcMetrics:
    """The gRPC families in one registry (the HTTP app's, served at ``/metrics``)."""

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        self.handled = Counter(
            "gpuproxy_grpc_server_handled",
            "gRPC calls completed, by method and status code (errors: grpc_code is not OK)",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.latency = Histogram(
            "gpuproxy_grpc_server_handling_seconds",
            "gRPC call latency, request headers received to trailers sent",
            ["grpc_service", "grpc_method"],
            registry=registry,
            buckets=buckets,
        )

    def instrument(self, server: Server) -> None:
        """Count every call ``server`` answers from now on."""

        async def on_request(event: RecvRequest) -> None:
            service, method = split_method(event.method_name)
            _call.set((service, method, time.perf_counter()))

        async def on_trailers(event: SendTrailingMetadata) -> None:
            call = _call.get()
            if call is None:  # trailers without a request: grpclib refused it before routing
                return
            service, method, started = call
            _call.set(None)
            self.handled.labels(service, method, event.status.name).inc()
            self.latency.labels(service, method).observe(time.perf_counter() - started)

        listen(server, RecvRequest, on_request)
        listen(server, SendTrailingMetadata, on_trailers)
