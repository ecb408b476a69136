"""The grpclib server inside ``aiserve-gpuproxyd``, on the HTTP app's event loop.

It serves ``gpuproxy.GPUProxyService`` with the process's one ``ProxyRuntime`` (so leases and
load tracking are shared with the REST proxy), the standard ``grpc.health.v1.Health`` service
(SERVING while the database answers) and server reflection. TLS when ``GRPC_TLS_CERT`` and
``GRPC_TLS_KEY`` are set. ``start``/``stop`` are lifespan hooks: the HTTP app stops it before
its own shutdown closes the runtime; calls in flight get ``DRAIN_SECONDS`` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet
from google.protobuf.descriptor_pool import Default, DescriptorPool
from grpclib.health.check import ServiceCheck
from grpclib.health.service import Health
from grpclib.health.v1 import health_pb2
from grpclib.reflection.service import ServerReflection
from grpclib.reflection.v1 import reflection_pb2
from grpclib.reflection.v1alpha import reflection_pb2 as reflection_v1alpha_pb2
from grpclib.server import Server

from infrastructure.db.setup import database_answers
from infrastructure.proxy.runtime import ProxyRuntime
from interfaces.grpc.calls import Guard
from interfaces.grpc.metrics import GrpcMetrics
from interfaces.grpc.service import GpuProxyService

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

log = logging.getLogger("aiserve.grpc")
# package data, read through importlib.resources (an installed wheel has them too)
DESCRIPTOR_SET = files("interfaces.grpc.generated") / "gpuproxy.binpb"
OIP_DESCRIPTOR_SET = files("interfaces.grpc_inference.generated") / "grpc_predict_v2.binpb"
DRAIN_SECONDS = 10.0


def reflection_pool() -> Any:
    """A descriptor pool with our proto (and its imports), health and reflection.

    betterproto code registers no descriptors, so the committed descriptor set is loaded; a
    pool of its own keeps it apart from any protobuf-generated copy in the same process.
    """
    pool = DescriptorPool()
    for descriptor_set in (DESCRIPTOR_SET, OIP_DESCRIPTOR_SET):
        for proto in FileDescriptorSet.FromString(descriptor_set.read_bytes()).file:
            pool.Add(proto)
    for module in (health_pb2, reflection_pb2, reflection_v1alpha_pb2):
        proto = FileDescriptorProto()
        Default().FindFileByName(module.DESCRIPTOR.name).CopyToProto(proto)
        pool.Add(proto)
    return pool


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """TLS 1.2+ with ALPN ``h2``, as gRPC clients require."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2"])
    return context


class GrpcServer:
    """Start and stop the gRPC side of one server process."""

    def __init__(
        self,
        container: Container,
        runtime: ProxyRuntime,
        extra_services: Sequence[Any] = (),
        sockets: Sequence[socket.socket] = (),
        metrics: GrpcMetrics | None = None,
    ) -> None:
        """``extra_services``: more grpclib servicers to serve on the same port. ``sockets``:
        ``GRPC_PORT`` already bound (``interfaces.listeners``); one is served as it is.
        ``metrics``: where calls are counted (the HTTP app's registry, served at /metrics)."""
        self.metrics = metrics
        self.sockets = list(sockets)
        self.c = container
        self.runtime = runtime
        self.extra_services = list(extra_services)
        self.guard = Guard(container)
        self.server: Server | None = None
        self._check: ServiceCheck | None = None

    async def _database_ok(self) -> bool:
        def ping() -> bool:
            database_answers(self.c.db)
            return True

        return await asyncio.to_thread(ping)

    async def start(self) -> None:
        settings = self.c.settings
        service = GpuProxyService(self.c, self.runtime, self.guard)
        self._check = ServiceCheck(self._database_ok, check_ttl=5.0, check_timeout=5.0)
        served = [service, *self.extra_services]
        health = Health({s: [self._check] for s in served})  # every served service, by name
        handlers = ServerReflection.extend([*served, health], pool=reflection_pool())
        server = Server(handlers)
        if self.metrics is not None:
            self.metrics.instrument(server)
        tls = None
        if settings.grpc.tls_cert and settings.grpc.tls_key:
            tls = tls_context(settings.grpc.tls_cert, settings.grpc.tls_key)
        try:
            if len(self.sockets) == 1:
                await server.start(sock=self.sockets[0], ssl=tls)
            else:  # none bound, or a host name with several addresses: grpclib binds them all
                for sock in self.sockets:
                    sock.close()
                await server.start(
                    settings.http.host, settings.grpc.port, ssl=tls, reuse_address=True
                )
        except OSError as exc:
            raise RuntimeError(
                f"cannot listen for gRPC on {settings.http.host}:{settings.grpc.port} "
                f"(GRPC_PORT; GRPC_ENABLED=false turns gRPC off): {exc.strerror or exc}"
            ) from None
        self.server = server
        mode = "TLS" if tls else "insecure (set GRPC_TLS_CERT and GRPC_TLS_KEY for TLS)"
        log.info("gRPC on %s:%s, %s", settings.http.host, settings.grpc.port, mode)

    async def stop(self) -> None:
        if self.server is None:
            return
        if not await self.guard.drain(DRAIN_SECONDS):
            log.warning(
                "gRPC: %d call(s) still running after %.0f s: cancelled",
                self.guard.inflight,
                DRAIN_SECONDS,
            )
        self.server.close()
        await self.server.wait_closed()
        poll = getattr(self._check, "_poll_task", None)  # started by Health.Watch subscribers
        if poll is not None:
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
        self.server = None
        log.info("gRPC stopped")
