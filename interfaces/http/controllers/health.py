"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from interfaces.http.security import container_of

READY_MAX_LAG = 10_000


@get("/health", tags=["operations"], summary="Liveness")
async def health() -> dict[str, Any]:
    """``pid``: the server process that answered (one of several with ``WORKERS``)."""
    return {"status": "ok", "timestamp": datetime.now(UTC).isoformat(), "pid": os.getpid()}


@get(
    "/ready",
    tags=["operations"],
    summary="Readiness: database, Redis, projection lag",
    sync_to_thread=True,
)
def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    c = container_of(request)
    checks: dict[str, Any] = {}
    ok = True
    try:
        with c.db.snapshot() as tx:
            tx.fetchone("SELECT 1")
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
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return Response(body, status_code=200 if ok else 503)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", sync_to_thread=True)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    collector = request.app.state.metrics
    collector.refresh()
    return Response(
        generate_latest(collector.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


handlers = [health, ready, metrics]
