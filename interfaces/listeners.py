"""The server's listening sockets, bound before anything else starts.

A port that cannot be bound (in use, not allowed, unknown host) stops start-up at once with
one line naming the variable that sets it, instead of a failed lifespan's exception group
after migrations and background jobs had started. The sockets are handed to uvicorn and
grpclib as they are, so nothing can take the port in between.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infrastructure.settings import Settings

HTTP_ADVICE = "set PORT (or HOST) to a free port"
GRPC_ADVICE = "set GRPC_PORT to a free port, or GRPC_ENABLED=false to turn gRPC off"


class PortUnavailableError(Exception):
    """One line for the operator: what could not be bound, why, and which variable to change."""


def bind_tcp(host: str, port: int, *, what: str, advice: str) -> list[socket.socket]:
    """Bind ``host:port`` for every address it resolves to, as ``asyncio.create_server`` does
    (``SO_REUSEADDR``, IPv6 sockets v6-only); not yet listening. ``IPPROTO_TCP``, so asyncio
    turns Nagle off on accepted connections."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise PortUnavailableError(
            f"cannot listen for {what} on {where}: {exc.strerror or exc}; {advice}"
        ) from None
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys(infos):  # getaddrinfo may repeat one
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        close_all(sockets)
        reason = (exc.strerror or str(exc)).lower()
        raise PortUnavailableError(
            f"cannot listen for {what} on {where}: {reason}; {advice}"
        ) from None
    return sockets


def close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def bind_ports(settings: Settings) -> tuple[list[socket.socket], list[socket.socket]]:
    """``PORT``, then ``GRPC_PORT`` when gRPC is on: (HTTP sockets, gRPC sockets)."""
    http = bind_tcp(settings.http.host, settings.http.port, what="HTTP", advice=HTTP_ADVICE)
    if not settings.grpc.enabled:
        return http, []
    try:
        grpc = bind_tcp(settings.http.host, settings.grpc.port, what="gRPC", advice=GRPC_ADVICE)
    except PortUnavailableError:
        close_all(http)
        raise
    return http, grpc
