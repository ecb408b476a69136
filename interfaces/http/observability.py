"""Request metrics (Prometheus), access log lines without bodies or secrets, extra headers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from interfaces.grpc.metrics import GrpcMetrics
from interfaces.http.security import RATE_HEADERS

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

access_log = logging.getLogger("aiserve.access")
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: counters and histograms only (issue 22)
OBSERVED = "gpuproxy.observed"  # set in the scope once a request is counted and logged
HEAD_AS_GET = "gpuproxy.head"  # set by ``interfaces.http.head``: a HEAD served as a GET
UNMATCHED = "unmatched"  # the route label of requests no route took (404, 405)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class LedgerCounters(Collector):
    """The committer's running totals, exposed as counters (they only go up)."""

    def __init__(self, container: Container) -> None:
        self.container = container

    def collect(self) -> Iterator[Metric]:
        committer = self.container.ledger.committer
        yield CounterMetricFamily(
            "gpuproxy_ledger_commands",
            "Ledger commands committed by this process",
            value=committer.commands,
        )
        yield CounterMetricFamily(
            "gpuproxy_ledger_commit_batches",
            "Ledger commit transactions by this process",
            value=committer.batches,
        )


class Metrics:
    """One registry per app, so several apps (tests, replicas in one process) never clash."""

    def __init__(self, container: Container) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpuproxy_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gpuproxy_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.registry.register(LedgerCounters(container))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu, fds
        self.registry.register(GC_COLLECTOR)  # python_gc_* (stateless: safe in many registries)
        self.grpc = GrpcMetrics(self.registry, LATENCY_BUCKETS)  # filled by the gRPC server
        self.lag = Gauge(
            "gpuproxy_projection_lag_events",
            "Events not yet applied to a projection",
            ["projection"],
            registry=self.registry,
        )
        self.container = container

    def refresh(self) -> None:
        """Update gauges that need a database read (called when /metrics is scraped)."""
        for name, lag in self.container.runner.lag().items():
            self.lag.labels(name).set(lag)


class Observer:
    """Metrics, access log and rate-limit headers around one request (any ASGI app).

    ``around`` for Litestar's routes and requests no route takes, ``__call__`` for the fast
    lane's; both from the app's one outer layer, ``front.Front``.
    """

    MAX_SERIES = 4_096  # label combinations kept resolved (routes are templates: few)

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _record(self, method: str, route: str, status: int, elapsed: float) -> None:
        """Count one request; the labelled series are looked up once, not per request."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = (
                self.metrics.requests.labels(method, route, str(status)),
                self.metrics.latency.labels(method, route),
            )
            if len(self._series) < self.MAX_SERIES:
                self._series[key] = series
        series[0].inc()
        series[1].observe(elapsed)

    async def __call__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """One request of a route that set ``scope["path_template"]`` (the fast lane's)."""
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                _add_rate_headers(scope, message)
            await send(message)

        scope[OBSERVED] = True  # type: ignore[literal-required]
        try:
            await app(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            route: str = scope.get("path_template") or UNMATCHED
            method = _method(scope)
            self._record(method, route, status, elapsed)
            access_log.info("%s %s %s %.1fms", method, route, status, elapsed * 1000)

    async def around(
        self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, as_get: bool
    ) -> None:
        """One request to Litestar (``front.Front``), with one ``send`` wrapper for all of:
        the status for metrics and the access log (route: the template Litestar's router
        matched, else ``unmatched`` with the path: its 404 and 405), the rate-limit headers,
        HEAD in a 405's ``Allow`` beside GET, and with ``as_get`` a HEAD served as its GET
        (``head.py``): the GET's status and headers, one empty final body."""
        started = time.perf_counter()
        status = 500
        ended = False
        if as_get:
            scope["method"] = "GET"  # type: ignore[typeddict-unknown-key]
            scope[HEAD_AS_GET] = True  # type: ignore[literal-required]

        async def send_observed(message: Message) -> None:
            nonlocal status, ended
            if message["type"] == "http.response.start":
                status = message["status"]
                _add_rate_headers(scope, message)
                if status == 405:
                    _allow_head(message)
            elif as_get and message["type"] == "http.response.body":
                if ended:
                    return
                ended = True  # one empty, final body message however the GET streams
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        scope[OBSERVED] = True  # type: ignore[literal-required]
        try:
            await app(scope, receive, send_observed)
        finally:
            elapsed = time.perf_counter() - started
            method = _method(scope)
            route: str | None = scope.get("path_template")
            if route:
                self._record(method, route, status, elapsed)
                access_log.info("%s %s %s %.1fms", method, route, status, elapsed * 1000)
            else:
                self._record(method, UNMATCHED, status, elapsed)
                path = scope.get("path", "")[:200]
                access_log.info(
                    "%s %s %s %.1fms path=%r", method, UNMATCHED, status, elapsed * 1000, path
                )


_RATE_NAMES: dict[str, bytes] = {}  # header name -> its lower-case bytes (a handful)


def _add_rate_headers(scope: Scope, message: HTTPResponseStartEvent) -> None:
    """The rate-limit headers the auth step left in the scope's state (a 429 answer already
    carries them: never twice)."""
    extra = scope.get("state", {}).get(RATE_HEADERS)
    if not extra:
        return
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    for key, value in extra.items():
        name = _RATE_NAMES.get(key)
        if name is None:
            name = _RATE_NAMES.setdefault(key, key.lower().encode())
        if name not in present:
            headers.append((name, value.encode()))
    message["headers"] = headers


def _allow_head(message: HTTPResponseStartEvent) -> None:
    """A 405's ``Allow`` lists HEAD wherever GET is allowed (``interfaces.http.head``)."""
    headers = list(message.get("headers", ()))
    for i, (name, value) in enumerate(headers):
        if name.lower() == b"allow":
            methods = [m.strip() for m in value.decode("latin-1").split(",") if m.strip()]
            if "GET" in methods and "HEAD" not in methods:
                headers[i] = (name, ", ".join([*methods, "HEAD"]).encode("latin-1"))
                message["headers"] = headers
            return


def _method(scope: Scope) -> str:
    """The request's method as the client sent it (a HEAD is served as a GET)."""
    return "HEAD" if scope.get(HEAD_AS_GET) else str(scope.get("method", ""))
