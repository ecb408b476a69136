"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infrastructure.db.setup import database_answers
from interfaces.http.openapi import PUBLIC, answers
from interfaces.presenters.health import Health, Readiness

if TYPE_CHECKING:
    from interfaces.bootstrap import Container
    from interfaces.http.observability import Metrics

READY_MAX_LAG = 10_000


@get(
    "/health",
    tags=["operations"],
    summary="Liveness",
    operation_class=PUBLIC,
    description=(
        "Liveness: 200 with `status: ok`, the server's time and `pid` (the process that answered, "
        "one of several with `WORKERS`) for as long as the process serves HTTP. It checks no "
        "dependency: use /ready for that. Anyone may call it, without a credential; it changes "
        "nothing."
    ),
)
async def health() -> Health:
    """``pid``: the server process that answered (one of several with ``WORKERS``)."""
    return Health(status="ok", timestamp=datetime.now(UTC).isoformat(), pid=os.getpid())


@get(
    "/ready",
    tags=["operations"],
    summary="Readiness: database, Redis, projection lag (503 when not ready)",
    sync_to_thread=True,
    operation_class=PUBLIC,
    responses=answers(Readiness, 503, description="Not ready: the failing checks say why"),
    description=(
        "Readiness for load balancers and orchestrators: the database answers a query, Redis "
        "answers PING (when configured) and no projection is more than 10000 events behind. 200 "
        "when every check passes; 503 with the same body, naming the failing check, when one does "
        "not. Anyone may call it, without a credential; it changes nothing."
    ),
)
def ready(c: NamedDependency[Container]) -> Response[Readiness]:
    checks: dict[str, Any] = {}
    ok = True
    try:
        database_answers(c.db)
        checks["database"] = "ok"
    except Exception as exc:
        ok, checks["database"] = False, f"error: {type(exc).__name__}"
    if c.redis is not None:
        try:
            c.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            ok, checks["redis"] = False, f"error: {type(exc).__name__}"
    try:
        lag = c.runner.lag()
        checks["projection_lag"] = lag
        if max(lag.values(), default=0) > READY_MAX_LAG:
            ok = False
    except Exception as exc:
        ok, checks["projection_lag"] = False, f"error: {type(exc).__name__}"
    if c.runner.last_error:
        checks["projection_error"] = c.runner.last_error
    body = Readiness(status="ready" if ok else "not ready", checks=checks)
    return Response(body, status_code=200 if ok else 503)


@get(
    "/metrics",
    tags=["operations"],
    summary="Prometheus metrics (text exposition format)",
    sync_to_thread=True,
    operation_class=PUBLIC,
    media_type=CONTENT_TYPE_LATEST,
    description=(
        "Prometheus metrics in the text exposition format: HTTP requests and their duration per "
        "route, gRPC calls, ledger commands and commit batches, projection lag, and the process's "
        "own figures. Anyone who can reach the port may scrape it, so restrict it at the network "
        "edge; reading it changes nothing."
    ),
)
def metrics(metrics: NamedDependency[Metrics]) -> Response[bytes]:
    collector = metrics
    collector.refresh()
    return Response(
        generate_latest(collector.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


handlers = [health, ready, metrics]
