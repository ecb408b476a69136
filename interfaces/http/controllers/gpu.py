"""GPU marketplace: catalog, rent, list, inspect and destroy your instances."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from litestar import Request, Router, delete, get, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency, Provide
from litestar.params import (
    FromPath,
    HeaderParameter,
    JSONBody,
    PathParameter,
    QueryParameter,
)
from msgspec import Meta

from domain.instances import GpuInstance
from domain.marketplace import OfferQuery
from domain.money import usd_to_micros
from domain.reservations import Reservation
from domain.services.marketplace import InstanceNotFoundError, RentSpec
from domain.usage import Caller
from infrastructure.identity.auth import Principal
from infrastructure.proxy.runtime import ProxyRuntime
from interfaces.http.openapi import AUTHED, errors
from interfaces.http.schemas import NO_NUL, RentBody, ReserveBody
from interfaces.http.security import client_address, provide_principal
from interfaces.presenters.instances import (
    Catalog,
    InstanceAnswer,
    Rentals,
    ReservationAnswer,
    present_instance,
    present_offer,
    present_reservation,
)
from interfaces.usage_sessions_view import counted

if TYPE_CHECKING:
    from interfaces.bootstrap import Container

RENTALS_CATCH_UP = 2.0  # seconds the list may wait for the instances read model
Text = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]
# One parameter name for /instances/{provider}/{id}: an offer id to rent (POST), an instance
# id (UUID) to read or destroy (GET, DELETE). OpenAPI allows one name per path template.
ItemId = Annotated[
    str,
    PathParameter(description="POST: the offer id to rent; GET and DELETE: an instance id (UUID)"),
]


def _instance_id(value: str) -> UUID:
    """The path's ``{id}`` as an instance id: anything else names no instance (404)."""
    try:
        return UUID(value)
    except ValueError:
        raise InstanceNotFoundError("No such instance", instance_id=value) from None


@get(
    "/instances",
    summary="GPU offers from every marketplace (or one), cheapest first",
    responses=errors(*AUTHED, 503),
    description=(
        "Searches the GPU offers of every configured marketplace, or of `provider`, filtered by "
        "`min_vram` (GB), `max_price` (USD per hour), `gpu_model`, `region` and `num_gpus`, sorted "
        "by `sort` (price by default), at most `limit`. Prices are what the caller pays. A "
        "marketplace that fails is named under `errors` while the others still answer. Any "
        "authenticated caller; changes nothing. 400 names a bad filter; 503 when no marketplace "
        "can be searched."
    ),
)
async def catalog(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    provider: Annotated[str | None, QueryParameter(max_length=32)] = None,
    min_vram: Annotated[float | None, QueryParameter(ge=0, le=10_000)] = None,
    max_price: Annotated[str | None, QueryParameter(max_length=32)] = None,
    gpu_model: Annotated[str | None, QueryParameter(max_length=64, pattern=NO_NUL)] = None,
    region: Annotated[str | None, QueryParameter(max_length=64, pattern=NO_NUL)] = None,
    num_gpus: Annotated[int | None, QueryParameter(ge=1, le=64)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 64,
    sort: Annotated[str, QueryParameter(max_length=16)] = "price",
) -> Catalog:
    market = c.marketplace
    query = OfferQuery(
        min_vram_gb=min_vram,
        max_price_per_hour=None
        if max_price is None
        else usd_to_micros(max_price, field="max_price"),
        gpu_model=gpu_model,
        region=region,
        num_gpus=num_gpus,
        limit=limit,
    )
    result = await market.catalog(
        query, provider if provider not in (None, "all") else None, sort=sort
    )
    offers = [present_offer(o) for o in result.offers]
    return Catalog(offers=offers, count=len(offers), errors=dict(result.errors))


@post(
    "/instances/{provider:str}/{id:str}",
    status_code=201,
    summary="Rent an offer: a credit hold first (402 if refused), then the provider",
    responses=errors(*AUTHED, 402, 404, 409, 502, 503),
    description=(
        "Rents offer `{id}` of marketplace `{provider}` with the given image, environment, ports, "
        "disk and start command. A credit hold is taken first (402 when credits or guard rails "
        "refuse it), then the provider is asked; the instance is billed per second until it is "
        "destroyed. The same `Idempotency-Key` gives the same instance on a retry. 404 for an "
        "unknown offer; 409 when the offer is no longer available; 502 when the provider fails and "
        "503 when it is unreachable (the hold is released)."
    ),
)
async def rent(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    principal: NamedDependency[Principal],
    provider: FromPath[str],
    id: ItemId,  # the offer id
    data: JSONBody[RentBody],
    idempotency_key: Annotated[
        str | None, HeaderParameter(name="Idempotency-Key", max_length=200, required=False)
    ] = None,
) -> InstanceAnswer:
    spec = RentSpec(
        image=data.image,
        env=dict(data.env),
        ports=tuple(data.ports),
        disk_gb=data.disk_gb,
        onstart=data.onstart,
    )
    caller = _caller(request, runtime, principal)
    gpu = await c.marketplace.rent(
        principal.user_id, provider, id, spec, idempotency_key, caller=caller
    )
    return InstanceAnswer(instance=present_instance(gpu, c.ledger.clock()))


def _caller(request: Request[Any, Any, Any], runtime: ProxyRuntime, principal: Principal) -> Caller:
    """Who rents (credential, address), counted as a request of their usage session."""
    agent = request.headers.get("user-agent", "")
    caller = principal.caller(client_address(request.scope), agent)
    return counted(runtime.sessions, principal.user_id, caller)


def _owned(
    c: Container,
    principal: Principal,
    provider: str,
    instance_id: UUID,
) -> GpuInstance:
    """The instance, if it is the caller's (or the caller is an admin) and on ``provider``."""
    gpu = c.marketplace.get(instance_id)
    if (gpu.owner != principal.user_id and not principal.is_admin) or gpu.provider != provider:
        raise InstanceNotFoundError("No such instance", instance_id=str(instance_id))
    return gpu


@get(
    "/instances/{provider:str}/{id:str}",
    summary="One of your instances",
    responses=errors(*AUTHED, 404),
    description=(
        "One of the caller's instances, by id, on `{provider}`: state, GPU, price, endpoint and "
        "what it has cost so far. The owner or an admin; changes nothing. 404 for an unknown "
        "instance, one of another user, or an id that is not a UUID."
    ),
)
async def instance(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    provider: FromPath[str],
    id: ItemId,  # the instance id
) -> InstanceAnswer:
    found = _instance_id(id)
    gpu = await sync_to_thread(_owned, c, principal, provider, found)
    return InstanceAnswer(instance=present_instance(gpu, c.ledger.clock()))


@delete(
    "/instances/{provider:str}/{id:str}",
    status_code=200,
    summary="Stop billing and destroy one of your instances",
    responses=errors(*AUTHED, 404, 502),
    description=(
        "Stops billing for one of the caller's instances at once (what it cost is captured and the "
        "rest of its hold freed) and asks the provider to destroy it; answers the instance in its "
        "final state. The owner or an admin. 404 for an unknown instance or one of another user; "
        "502 when the provider fails."
    ),
)
async def destroy(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    provider: FromPath[str],
    id: ItemId,  # the instance id
) -> InstanceAnswer:
    found = _instance_id(id)
    await sync_to_thread(_owned, c, principal, provider, found)
    gpu = await c.marketplace.destroy(found, actor=principal.user_id)
    return InstanceAnswer(instance=present_instance(gpu, c.ledger.clock()))


@post(
    "/instances/reserve",
    status_code=201,
    summary="Reserve 1-16 GPUs under one hold: all running before the deadline, or none",
    responses=errors(*AUTHED, 402, 409, 503),
    description=(
        "Reserves `count` GPUs (1 to 16) matching the filters under one credit hold: the instances "
        "are rented at once and must all be running before the reservation's deadline, or they are "
        "all destroyed and the hold freed. Answers the reservation; follow it with GET "
        "/gpu/reservations/{id}. 402 when credits or guard rails refuse the hold; 409 when too few "
        "offers match; 503 when the marketplaces are unreachable."
    ),
)
async def reserve(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    runtime: NamedDependency[ProxyRuntime],
    principal: NamedDependency[Principal],
    data: JSONBody[ReserveBody],
) -> ReservationAnswer:
    query = OfferQuery(
        min_vram_gb=data.min_vram,
        max_price_per_hour=None
        if data.max_price is None
        else usd_to_micros(data.max_price, field="max_price"),
        gpu_model=data.gpu_model,
        region=data.region,
        num_gpus=data.num_gpus,
    )
    reservation = await c.marketplace.reserve(
        principal.user_id,
        data.count,
        query,
        None if data.provider == "all" else data.provider,
        RentSpec(image=data.image),
        timeout=c.settings.marketplace.reservation_timeout,
        caller=_caller(request, runtime, principal),
    )
    return ReservationAnswer(reservation=present_reservation(reservation))


def _own_reservation(c: Container, principal: Principal, reservation_id: UUID) -> Reservation:
    found = c.marketplace.get_reservation(reservation_id)
    if found.owner != principal.user_id and not principal.is_admin:
        raise InstanceNotFoundError("No such reservation", reservation_id=str(reservation_id))
    return found


@get(
    "/reservations/{reservation_id:uuid}",
    summary="One of your reservations",
    responses=errors(*AUTHED, 404),
    description=(
        "One of the caller's reservations: its state, instances, hold and deadline. The owner or "
        "an admin; changes nothing. 404 for an unknown reservation or one of another user."
    ),
)
async def reservation(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    reservation_id: FromPath[UUID],
) -> ReservationAnswer:
    found = await sync_to_thread(_own_reservation, c, principal, reservation_id)
    return ReservationAnswer(reservation=present_reservation(found))


@delete(
    "/reservations/{reservation_id:uuid}",
    status_code=200,
    summary="Release a reservation: destroy its instances, free the hold",
    responses=errors(*AUTHED, 404),
    description=(
        "Releases one of the caller's reservations: destroys its instances and frees what is left "
        "of its hold. The owner or an admin. 404 for an unknown reservation or one of another "
        "user."
    ),
)
async def release(
    request: Request[Any, Any, Any],
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    reservation_id: FromPath[UUID],
) -> ReservationAnswer:
    await sync_to_thread(_own_reservation, c, principal, reservation_id)
    released = await c.marketplace.release_reservation(reservation_id, actor=principal.user_id)
    return ReservationAnswer(reservation=present_reservation(released))


@get(
    "/rentals",
    sync_to_thread=True,
    summary="Your instances, newest first",
    responses=errors(401, 429),
    description=(
        "Every instance the caller has rented, in any state, newest first, with state, price and "
        "what each has cost so far. A rental just made is listed (the list waits briefly for the "
        "read model). Own instances only; changes nothing."
    ),
)
def rentals(c: NamedDependency[Container], principal: NamedDependency[Principal]) -> Rentals:
    # Read your writes: the list holds every instance an answer (any process) reported.
    c.runner.catch_up_one("instances", time.monotonic() + RENTALS_CATCH_UP)
    ids = c.instance_queries.ids_for(principal.user_id)
    now = c.ledger.clock()
    return Rentals(rentals=[present_instance(c.marketplace.get(UUID(i)), now) for i in ids])


router = Router(
    path="/api/v1/gpu",
    tags=["gpu"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[catalog, reserve, rent, instance, destroy, rentals, reservation, release],
)
