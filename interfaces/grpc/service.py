"""``gpuproxy.GPUProxyService``: each RPC translates to the application service REST uses.

Every handler runs inside ``Guard.wrap`` (``calls``): credentials (all RPCs but Login,
HealthCheck and CreateAPIKey, which reads its own), the user's rate limit, and one error
mapping (``errors``). Blocking reads and writes run in a thread, as the REST handlers do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import grpclib.const
import msgspec
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from domain.balancing import STRATEGIES
from domain.errors import InvalidArgumentError
from domain.instances import GpuInstance
from domain.marketplace import OfferQuery
from domain.money import micros_to_usd
from domain.reservations import Reservation
from domain.services.marketplace import InstanceNotFoundError, RentSpec
from domain.usage import Caller
from infrastructure.identity.auth import Principal
from infrastructure.proxy.runtime import ProxyRuntime
from interfaces.grpc import convert, proxy
from interfaces.grpc.auth import authenticate, limit_anonymous
from interfaces.grpc.billing import BillingRpcs
from interfaces.grpc.calls import Call, Guard, current
from interfaces.grpc.convert import ranged, text, usd_in
from interfaces.grpc.generated import gpuproxy as pb
from interfaces.http.schemas import LoginBody, RentBody, ReserveBody
from interfaces.usage_sessions_view import counted

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

T = TypeVar("T")
VERSION = "0.1.0"
CUIC_REFUSAL = (
    "CUIC is not supported by this server: use ProxyRequest/StreamProxyRequest, "
    "or the REST, MCP and agent endpoints"
)


def validated(fields: dict[str, Any], kind: type[T]) -> T:
    """Fields checked with the REST request body's own struct (same limits, same rules)."""
    try:
        return msgspec.convert(fields, kind)
    except msgspec.ValidationError as exc:
        raise InvalidArgumentError(f"Invalid request: {exc}") from None


def instance_uuid(value: str, field: str) -> UUID:
    try:
        return UUID(value.strip())
    except ValueError:
        raise InvalidArgumentError(f"{field} must be an id (a UUID)", field=field) from None


class GpuProxyService(BillingRpcs, pb.GpuProxyServiceBase):
    """The servicer; ``runtime`` is the process's proxy runtime, shared with the HTTP app."""

    def __init__(self, container: Container, runtime: ProxyRuntime, guard: Guard) -> None:
        self.c = container
        self.runtime = runtime
        self.guard = guard

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            path: grpclib.const.Handler(
                self.guard.wrap(path.rpartition("/")[2], handler.func),
                handler.cardinality,
                handler.request_type,
                handler.reply_type,
            )
            for path, handler in super().__mapping__().items()
        }

    # ------------------------------------------------------------ authentication

    async def login(self, login_request: pb.LoginRequest) -> pb.LoginResponse:
        call = current()
        body = validated(
            {"email": login_request.email, "password": login_request.password}, LoginBody
        )

        def run() -> Any:
            limit_anonymous(self.c, call.peer_host)
            return self.c.auth.login(
                body.email, body.password, ip=call.peer_host, agent=call.user_agent
            )

        result = await asyncio.to_thread(run)
        return pb.LoginResponse(
            token=result.access_token,
            user_id=result.user.id,
            email=result.user.email,
            expires_at=result.expires_at,
        )

    async def create_api_key(
        self, create_api_key_request: pb.CreateApiKeyRequest
    ) -> pb.CreateApiKeyResponse:
        request = create_api_key_request
        call = current()
        api_key, authorization = call.header("x-api-key"), call.header("authorization")
        if not (api_key or authorization) and request.token:
            authorization = f"Bearer {request.token}"
        principal = await authenticate(self.c, api_key, authorization, call.peer_host)
        expires = request.expires_at or None
        key, plaintext = await asyncio.to_thread(
            self.c.auth.create_api_key, principal, request.name, expires
        )
        return pb.CreateApiKeyResponse(
            api_key=plaintext,
            name=key.name,
            created_at=key.created_at,
            id=key.id,
            expires_at=key.expires_at or 0,
        )

    # ------------------------------------------------------------ GPU management

    async def list_gpu_instances(
        self, list_gpu_instances_request: pb.ListGpuInstancesRequest
    ) -> pb.ListGpuInstancesResponse:
        request = list_gpu_instances_request
        provider = text(request.provider, "provider", 32).strip()
        if not (0 <= request.min_vram <= 10_000):  # also refuses NaN
            raise InvalidArgumentError("min_vram must be 0 to 10000 GB", field="min_vram")
        max_price = usd_in(request.max_price, "max_price")
        query = OfferQuery(
            min_vram_gb=request.min_vram or None,
            max_price_per_hour=max_price or None,
            gpu_model=text(request.gpu_model, "gpu_model", 64) or None,
            region=text(request.region, "region", 64) or None,
            num_gpus=ranged(request.num_gpus, "num_gpus", 1, 64) if request.num_gpus else None,
            limit=ranged(request.limit, "limit", 1, 500) if request.limit else 64,
        )
        result = await self.c.marketplace.catalog(
            query,
            provider if provider not in {"", "all"} else None,
            sort=text(request.sort, "sort", 16) or "price",
        )
        return pb.ListGpuInstancesResponse(
            instances=[convert.offer_message(o) for o in result.offers],
            total_count=len(result.offers),
            errors=dict(result.errors),
        )

    async def create_gpu_instance(
        self, create_gpu_instance_request: pb.CreateGpuInstanceRequest
    ) -> pb.CreateGpuInstanceResponse:
        request = create_gpu_instance_request
        call = current()
        fields: dict[str, Any] = {"env": dict(request.env)}
        if request.image:
            fields["image"] = request.image
        if request.ports:
            fields["ports"] = list(request.ports)
        if request.disk_gb:
            fields["disk_gb"] = request.disk_gb
        if request.onstart:
            fields["onstart"] = request.onstart
        body = validated(fields, RentBody)
        key = request.idempotency_key or call.header("idempotency-key") or None
        if key is not None:
            text(key, "idempotency_key", 200)
        gpu = await self.c.marketplace.rent(
            call.user.user_id,
            text(request.provider, "provider", 32, required=True),
            text(request.instance_id, "instance_id", 200, required=True),
            RentSpec(
                image=body.image,
                env=dict(body.env),
                ports=tuple(body.ports),
                disk_gb=body.disk_gb,
                onstart=body.onstart,
            ),
            key,
            caller=self._caller(call),
        )
        contract = gpu.provider_instance_id
        return pb.CreateGpuInstanceResponse(
            instance_id=str(gpu.id),
            provider=gpu.provider,
            status=gpu.state,
            message=f"Contract ID: {contract}" if contract else f"Instance {gpu.state}",
            rental=convert.rental_message(gpu, self.c.ledger.clock()),
        )

    def _caller(self, call: Call) -> Caller:
        """Who rents (credential, address), counted as a request of their usage session."""
        caller = call.user.caller(call.peer_host, call.user_agent)
        return counted(self.runtime.sessions, call.user.user_id, caller)

    def _owned(self, principal: Principal, provider: str, instance_id: str) -> GpuInstance:
        """The instance if it is the caller's (or an admin's call) and on ``provider``."""
        iid = instance_uuid(instance_id, "instance_id")
        gpu = self.c.marketplace.get(iid)
        mine = gpu.owner == principal.user_id or principal.is_admin
        if not mine or (provider and gpu.provider != provider):
            raise InstanceNotFoundError("No such instance", instance_id=str(iid))
        return gpu

    async def destroy_gpu_instance(
        self, destroy_gpu_instance_request: pb.DestroyGpuInstanceRequest
    ) -> pb.DestroyGpuInstanceResponse:
        request = destroy_gpu_instance_request
        user = current().user
        gpu = await asyncio.to_thread(self._owned, user, request.provider, request.instance_id)
        gpu = await self.c.marketplace.destroy(gpu.id, actor=user.user_id)
        return pb.DestroyGpuInstanceResponse(
            success=True,
            message=f"Instance {gpu.state}",
            rental=convert.rental_message(gpu, self.c.ledger.clock()),
        )

    async def get_gpu_instance(
        self, get_gpu_instance_request: pb.GetGpuInstanceRequest
    ) -> pb.GetGpuInstanceResponse:
        request = get_gpu_instance_request
        user = current().user
        gpu = await asyncio.to_thread(self._owned, user, request.provider, request.instance_id)
        return pb.GetGpuInstanceResponse(
            instance=convert.instance_message(gpu),
            rental=convert.rental_message(gpu, self.c.ledger.clock()),
        )

    async def list_rentals(
        self, list_rentals_request: pb.ListRentalsRequest
    ) -> pb.ListRentalsResponse:
        user = current().user

        def rentals() -> list[GpuInstance]:
            ids = self.c.instance_queries.ids_for(user.user_id)
            return [self.c.marketplace.get(UUID(i)) for i in ids]

        now = self.c.ledger.clock()
        gpus = await asyncio.to_thread(rentals)
        return pb.ListRentalsResponse(rentals=[convert.rental_message(g, now) for g in gpus])

    async def reserve_gp_us(
        self, reserve_gp_us_request: pb.ReserveGpUsRequest
    ) -> pb.ReserveGpUsResponse:
        request = reserve_gp_us_request
        user = current().user
        max_price = usd_in(request.max_price, "max_price")
        fields: dict[str, Any] = {"count": request.count, "provider": request.provider or "all"}
        if request.min_vram:
            fields["min_vram"] = request.min_vram
        if max_price:
            fields["max_price"] = micros_to_usd(max_price)
        for name in ("gpu_model", "region", "image"):
            if value := getattr(request, name):
                fields[name] = value
        if request.num_gpus:
            fields["num_gpus"] = request.num_gpus
        data = validated(fields, ReserveBody)
        query = OfferQuery(
            min_vram_gb=data.min_vram,
            max_price_per_hour=max_price or None,
            gpu_model=data.gpu_model,
            region=data.region,
            num_gpus=data.num_gpus,
        )
        reservation = await self.c.marketplace.reserve(
            user.user_id,
            data.count,
            query,
            None if data.provider == "all" else data.provider,
            RentSpec(image=data.image),
            timeout=self.c.settings.marketplace.reservation_timeout,
            caller=self._caller(current()),
        )
        members = await asyncio.to_thread(
            lambda: [self.c.marketplace.get(UUID(m)) for m in reservation.members]
        )
        confirmed = reservation.state == "confirmed"
        return pb.ReserveGpUsResponse(
            reserved_instances=[convert.instance_message(g) for g in members],
            reserved_count=reservation.gpus if confirmed else 0,
            message=(
                f"Successfully reserved {reservation.gpus} GPU(s) on {len(members)} instance(s)"
                if confirmed
                else f"Reserved 0/{reservation.count} GPUs: "
                f"{reservation.reason or reservation.state}"
            ),
            reservation=convert.reservation_message(reservation),
        )

    def _own_reservation(self, principal: Principal, reservation_id: str) -> Reservation:
        rid = instance_uuid(reservation_id, "reservation_id")
        found = self.c.marketplace.get_reservation(rid)
        if found.owner != principal.user_id and not principal.is_admin:
            raise InstanceNotFoundError("No such reservation", reservation_id=str(rid))
        return found

    async def get_reservation(
        self, get_reservation_request: pb.GetReservationRequest
    ) -> pb.ReservationResponse:
        user = current().user
        found = await asyncio.to_thread(
            self._own_reservation, user, get_reservation_request.reservation_id
        )
        return pb.ReservationResponse(reservation=convert.reservation_message(found))

    async def release_reservation(
        self, release_reservation_request: pb.ReleaseReservationRequest
    ) -> pb.ReservationResponse:
        user = current().user
        found = await asyncio.to_thread(
            self._own_reservation, user, release_reservation_request.reservation_id
        )
        released = await self.c.marketplace.release_reservation(found.id, actor=user.user_id)
        return pb.ReservationResponse(reservation=convert.reservation_message(released))

    # ------------------------------------------------------------ proxy

    async def proxy_request(
        self, proxy_request_message: pb.ProxyRequestMessage
    ) -> pb.ProxyResponse:
        return await proxy.unary(self.runtime, current(), proxy_request_message)

    async def stream_proxy_request(
        self, proxy_request_message_iterator: AsyncIterator[pb.ProxyRequestMessage]
    ) -> AsyncIterator[pb.ProxyResponse]:
        answers = proxy.stream(self.runtime, self.c, current(), proxy_request_message_iterator)
        async for answer in answers:
            yield answer

    async def set_load_balancer_strategy(
        self, set_load_balancer_strategy_request: pb.SetLoadBalancerStrategyRequest
    ) -> pb.SetLoadBalancerStrategyResponse:
        user = current().user
        name = text(set_load_balancer_strategy_request.strategy, "strategy", 64, required=True)
        chosen = await asyncio.to_thread(self.runtime.set_strategy, user.user_id, name)
        return pb.SetLoadBalancerStrategyResponse(strategy=chosen, success=True)

    async def get_load_balancer_strategy(
        self, get_load_balancer_strategy_request: pb.GetLoadBalancerStrategyRequest
    ) -> pb.GetLoadBalancerStrategyResponse:
        name = await self.runtime.strategy(current().user.user_id)
        return pb.GetLoadBalancerStrategyResponse(strategy=name, available=list(STRATEGIES))

    async def get_load_info(
        self, get_load_info_request: pb.GetLoadInfoRequest
    ) -> pb.GetLoadInfoResponse:
        user = current().user
        return await asyncio.to_thread(
            proxy.load_info,
            self.runtime,
            self.c.instance_queries,
            user.user_id,
            get_load_info_request.type,
        )

    # ------------------------------------------------------------ CUIC, health

    async def send_cuic_message(
        self, cuic_message_request: pb.CuicMessageRequest
    ) -> pb.CuicMessageResponse:
        raise GRPCError(Status.UNIMPLEMENTED, CUIC_REFUSAL)

    def stream_cuic_message(
        self, cuic_message_request_iterator: AsyncIterator[pb.CuicMessageRequest]
    ) -> AsyncIterator[pb.CuicMessageResponse]:
        raise GRPCError(Status.UNIMPLEMENTED, CUIC_REFUSAL)

    async def health_check(
        self, health_check_request: pb.HealthCheckRequest
    ) -> pb.HealthCheckResponse:
        return pb.HealthCheckResponse(
            status="ok",
            timestamp=int(time.time()),
            details={"service": "gpuproxy-grpc", "version": VERSION},
        )
