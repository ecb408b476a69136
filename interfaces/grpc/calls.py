"""Every RPC runs inside ``Guard.wrap``: the per-call context, authentication, error mapping.

betterproto hands each RPC method only its request message; the call itself (metadata, peer,
deadline) and the authenticated ``Principal`` are kept in a context variable for the
duration of the call (``current()``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from domain.errors import DomainError
from infrastructure.identity.auth import AuthenticationError, Principal
from interfaces.grpc.auth import authenticate, peer_of
from interfaces.grpc.errors import to_grpc
from interfaces.http.security import reads_are_local

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger("aiserve.grpc")
P = ParamSpec("P")
T = TypeVar("T")
# Login and HealthCheck need no credentials; CreateAPIKey also takes a JWT from its message.
OPEN_METHODS = frozenset({"Login", "HealthCheck", "CreateAPIKey"})
Handler = Callable[[Any], Awaitable[None]]


@dataclass(frozen=True)
class Call:
    """One RPC in progress."""

    method: str
    stream: Any  # grpclib.server.Stream
    principal: Principal | None

    def header(self, name: str) -> str | None:
        value = self.stream.metadata.get(name) if self.stream.metadata else None
        return value if isinstance(value, str) else None

    @property
    def user(self) -> Principal:
        if self.principal is None:
            raise AuthenticationError("Missing authorization")
        return self.principal

    @property
    def peer_host(self) -> str:
        return peer_of(self.stream)

    @property
    def user_agent(self) -> str:
        return str(self.stream.user_agent or "")

    def time_left(self) -> float | None:
        """Seconds until the client's deadline, if it set one."""
        deadline = self.stream.deadline
        return None if deadline is None else max(0.001, deadline.time_remaining())


CURRENT: ContextVar[Call] = ContextVar("gpuproxy_grpc_call")


def current() -> Call:
    return CURRENT.get()


class Guard:
    """Wraps each handler; counts calls in flight so a shutdown can let them finish."""

    def __init__(self, container: Container) -> None:
        self.c = container
        self.inflight = 0
        self.draining = False
        self._idle: asyncio.Event | None = None

    def wrap(self, method: str, func: Handler) -> Handler:
        open_method = method in OPEN_METHODS

        async def handle(stream: Any) -> None:
            if self.draining:
                raise GRPCError(Status.UNAVAILABLE, "the server is shutting down")
            self.inflight += 1
            try:
                principal = None
                if not open_method:
                    principal = await authenticate(
                        self.c,
                        stream.metadata.get("x-api-key"),
                        _authorization(stream),
                        peer_of(stream),
                    )
                token = CURRENT.set(Call(method, stream, principal))
                try:
                    await func(stream)
                finally:
                    CURRENT.reset(token)
            except (GRPCError, StreamTerminatedError, asyncio.CancelledError):
                raise
            except DomainError as exc:
                raise to_grpc(exc) from None
            except TimeoutError:
                raise GRPCError(Status.UNAVAILABLE, "timed out") from None
            except Exception:
                log.exception("gRPC %s failed", method)
                raise GRPCError(Status.INTERNAL, "Internal server error") from None
            finally:
                self.inflight -= 1
                if self.inflight == 0 and self._idle is not None:
                    self._idle.set()

        return handle

    async def drain(self, timeout: float) -> bool:
        """Refuse new calls, then wait up to ``timeout`` s for those in flight; True if done."""
        self.draining = True
        if self.inflight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def read(c: Container, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A short read: on the loop when reads are local (as REST does), else in a thread."""
    if reads_are_local(c):
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def _authorization(stream: Any) -> str | None:
    value = stream.metadata.get("authorization")
    return value if isinstance(value, str) else None
