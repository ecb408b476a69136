"""Who is calling, from the call's metadata, with the same rules and rate limit as REST.

Credentials: ``x-api-key``, or ``authorization: Bearer <JWT or API key>``. Every
authenticated call (and each further request on a proxy stream) counts against the user's
per-minute limit; Login counts against the caller's address, sharing REST's counters.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from infrastructure.identity.auth import Principal
from interfaces.http.errors import RateLimitedError
from interfaces.http.security import identify

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

MAX_CREDENTIAL = 4096


async def authenticate(
    c: Container, api_key: str | None, authorization: str | None, address: str = ""
) -> Principal:
    """The caller, counted against their rate limit (RateLimitedError when over it), exactly
    as REST does it (``identify``, failed key attempts limited per key id and ``address``);
    over-long credentials are cut first."""
    api_key = (api_key or "")[:MAX_CREDENTIAL] or None
    authorization = (authorization or "")[:MAX_CREDENTIAL] or None
    principal, decision = await identify(c, api_key, authorization, address)
    if not decision.allowed:
        raise RateLimitedError(decision)
    return principal


async def count_request(c: Container, principal: Principal) -> None:
    """One more request by an already authenticated caller (a proxy stream's next message)."""
    if c.redis is None:
        decision = c.limiter.hit(principal.user_id)
    else:
        decision = await asyncio.to_thread(c.limiter.hit, principal.user_id)
    if not decision.allowed:
        raise RateLimitedError(decision)


def peer_of(stream: Any) -> str:
    """The client's address on a grpclib stream ("" when unknown)."""
    address = stream.peer.addr() if stream.peer else None
    return str(address[0]) if address else ""


def limit_anonymous(c: Container, address: str) -> None:
    """Login costs an argon2 hash: limit it per client address, as REST does."""
    decision = c.limiter.hit(f"ip:{address or 'unknown'}")
    if not decision.allowed:
        raise RateLimitedError(decision)
