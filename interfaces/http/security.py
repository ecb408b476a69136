"""Who is calling: authentication and the per-user rate limit, as one dependency."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from litestar import Request
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.types import Scope

from infrastructure.identity.auth import Principal
from infrastructure.identity.rate_limit import RateDecision
from interfaces.http.errors import RateLimitedError

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

RATE_HEADERS = "gpuproxy.rate_headers"
P = ParamSpec("P")
T = TypeVar("T")


def reads_are_local(c: Container) -> bool:
    """SQLite in WAL mode and no Redis: reads never wait on a lock or a network round trip."""
    return c.db.dialect == "sqlite" and c.redis is None


async def read(c: Container, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a short read on the event loop when reads are local, else in the thread pool.

    A hop to the thread pool costs more than a local SQLite read (docs/performance.md).
    """
    if reads_are_local(c):
        return fn(*args, **kwargs)
    return await sync_to_thread(fn, *args, **kwargs)


def _authenticate(
    c: Container, api_key: str | None, authorization: str | None, address: str
) -> tuple[Principal, RateDecision]:
    principal = c.auth.authenticate(api_key, authorization, address)
    return principal, c.limiter.hit(principal.user_id)


async def identify(
    c: Container, api_key: str | None, authorization: str | None, address: str = ""
) -> tuple[Principal, RateDecision]:
    """Authenticate (X-API-Key or Bearer JWT/key) and count the request against the limit.

    ``address`` is the client's: failed API-key attempts are limited per key id and per
    address, and argon2 checks are bounded (``infrastructure.identity.auth_throttle``).

    On the embedded set-up (SQLite in WAL mode, where readers never wait, and no Redis) a
    credential that needs no password hashing is checked on the event loop: the row reads
    take microseconds, less than a hop to the thread pool. Anything else runs in a thread.
    Every door (REST, the fast lane, gRPC) calls this.
    """
    if reads_are_local(c) and c.auth.is_cheap(api_key, authorization, address):
        return _authenticate(c, api_key, authorization, address)
    return await sync_to_thread(_authenticate, c, api_key, authorization, address)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else ""


async def principal_for(
    c: Container, scope: Scope, api_key: str | None, authorization: str | None
) -> Principal:
    """The caller (``identify``); the rate-limit headers go into the scope's state for the
    access middleware to add, and a request over the limit raises ``RateLimitedError``."""
    principal, decision = await identify(c, api_key, authorization, client_address(scope))
    scope.setdefault("state", {})[RATE_HEADERS] = decision.headers()
    if not decision.allowed:
        raise RateLimitedError(decision)
    return principal


async def provide_principal(
    request: Request[Any, Any, Any], c: NamedDependency[Container]
) -> Principal:
    """The calling user, as a route dependency (see ``principal_for``); ``c`` is the
    container dependency (``interfaces.bootstrap.ServingDoors``)."""
    headers = request.headers
    return await principal_for(
        c, request.scope, headers.get("x-api-key"), headers.get("authorization")
    )


async def provide_admin(
    request: Request[Any, Any, Any], c: NamedDependency[Container]
) -> Principal:
    principal = await provide_principal(request, c)
    principal.require_admin()
    return principal
