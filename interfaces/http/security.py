"""Who is calling: authentication and the per-user rate limit, as one dependency."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request
from litestar.concurrency import sync_to_thread

from infrastructure.auth import Principal
from infrastructure.rate_limit import RateDecision
from interfaces.http.errors import RateLimitedError

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

RATE_HEADERS = "gpuproxy.rate_headers"


def container_of(request: Request[Any, Any, Any]) -> Container:
    container: Container = request.app.state.container
    return container


def _authenticate(
    c: Container, api_key: str | None, authorization: str | None
) -> tuple[Principal, RateDecision]:
    principal = c.auth.authenticate(api_key, authorization)
    return principal, c.limiter.hit(principal.user_id)


async def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    """Authenticate (X-API-Key or Bearer JWT/key), then count the request against the limit."""
    principal, decision = await sync_to_thread(
        _authenticate,
        container_of(request),
        request.headers.get("x-api-key"),
        request.headers.get("authorization"),
    )
    request.scope.setdefault("state", {})[RATE_HEADERS] = decision.headers()
    if not decision.allowed:
        raise RateLimitedError(decision)
    return principal


async def provide_admin(request: Request[Any, Any, Any]) -> Principal:
    principal = await provide_principal(request)
    principal.require_admin()
    return principal
