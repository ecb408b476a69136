"""GPU marketplace actions: catalog, rent, destroy, reserve, list rentals.

Each handler calls the same ``MarketplaceService`` methods as ``interfaces/http/controllers/
gpu.py`` and answers with the same JSON shapes; the argument structs extend the REST bodies so
the limits are the same.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any
from uuid import UUID

from msgspec import Meta, Struct

from domain.marketplace import OfferQuery
from domain.services.marketplace import InstanceNotFoundError, RentSpec
from interfaces.agents.base import Action, NoArgs, Result, usd_filter
from interfaces.http.schemas import NO_NUL, RentBody, ReserveBody
from interfaces.presenters.instances import instance_json, offer_json, reservation_json

if TYPE_CHECKING:
    from infrastructure.identity.auth import Principal
    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

Short = Annotated[str, Meta(min_length=1, max_length=200, pattern=NO_NUL)]


class CatalogArgs(Struct, forbid_unknown_fields=True):
    provider: Annotated[str, Meta(max_length=32, pattern=NO_NUL)] = "all"
    min_vram: Annotated[float, Meta(ge=0, le=10_000)] | None = None
    max_price: Annotated[str, Meta(max_length=32)] | None = None
    gpu_model: Annotated[str, Meta(max_length=64, pattern=NO_NUL)] | None = None
    region: Annotated[str, Meta(max_length=64, pattern=NO_NUL)] | None = None
    num_gpus: Annotated[int, Meta(ge=1, le=64)] | None = None
    limit: Annotated[int, Meta(ge=1, le=500)] = 20
    sort: Annotated[str, Meta(max_length=16)] = "price"


class CreateArgs(RentBody, kw_only=True, forbid_unknown_fields=True):
    provider: Annotated[str, Meta(min_length=1, max_length=32, pattern=NO_NUL)]
    offer_id: Short
    idempotency_key: Short | None = None


class DestroyArgs(Struct, forbid_unknown_fields=True):
    instance_id: UUID
    provider: Annotated[str, Meta(max_length=32, pattern=NO_NUL)] | None = None


def _query(
    min_vram: float | None,
    max_price: str | None,
    gpu_model: str | None,
    region: str | None,
    num_gpus: int | None,
    limit: int = 64,
) -> OfferQuery:
    return OfferQuery(
        min_vram_gb=min_vram,
        max_price_per_hour=usd_filter(max_price, "max_price"),
        gpu_model=gpu_model,
        region=region,
        num_gpus=num_gpus,
        limit=limit,
    )


async def list_gpu_instances(
    c: Container, _rt: ProxyRuntime, _p: Principal, a: CatalogArgs
) -> Result:
    query = _query(a.min_vram, a.max_price, a.gpu_model, a.region, a.num_gpus, a.limit)
    provider = None if a.provider == "all" else a.provider
    result = await c.marketplace.catalog(query, provider, sort=a.sort)
    return {
        "offers": [offer_json(o) for o in result.offers],
        "count": len(result.offers),
        "errors": result.errors,
    }


async def create_gpu_instance(
    c: Container, rt: ProxyRuntime, p: Principal, a: CreateArgs
) -> Result:
    spec = RentSpec(
        image=a.image, env=dict(a.env), ports=tuple(a.ports), disk_gb=a.disk_gb, onstart=a.onstart
    )
    gpu = await c.marketplace.rent(p.user_id, a.provider, a.offer_id, spec, a.idempotency_key)
    rt.forget_pool(p.user_id)  # the next proxied request sees the new instance
    return {"instance": instance_json(gpu, c.ledger.clock())}


async def destroy_gpu_instance(
    c: Container, rt: ProxyRuntime, p: Principal, a: DestroyArgs
) -> Result:
    gpu = await asyncio.to_thread(c.marketplace.get, a.instance_id)
    foreign = gpu.owner != p.user_id and not p.is_admin
    if foreign or (a.provider not in (None, gpu.provider)):
        raise InstanceNotFoundError("No such instance", instance_id=str(a.instance_id))
    gpu = await c.marketplace.destroy(a.instance_id, actor=p.user_id)
    rt.forget_pool(gpu.owner)
    return {"instance": instance_json(gpu, c.ledger.clock())}


async def reserve_gpus(c: Container, rt: ProxyRuntime, p: Principal, a: ReserveBody) -> Result:
    query = _query(a.min_vram, a.max_price, a.gpu_model, a.region, a.num_gpus)
    reservation = await c.marketplace.reserve(
        p.user_id,
        a.count,
        query,
        None if a.provider == "all" else a.provider,
        RentSpec(image=a.image),
        timeout=c.settings.marketplace.reservation_timeout,
    )
    rt.forget_pool(p.user_id)
    return {"reservation": reservation_json(reservation)}


def _rentals(c: Container, user_id: str) -> list[dict[str, Any]]:
    now = c.ledger.clock()
    ids = c.instance_queries.ids_for(user_id)
    return [instance_json(c.marketplace.get(UUID(i)), now) for i in ids]


async def list_rentals(c: Container, _rt: ProxyRuntime, p: Principal, _a: NoArgs) -> Result:
    rentals = await asyncio.to_thread(_rentals, c, p.user_id)
    return {"rentals": rentals, "count": len(rentals)}


FILTER_HINTS = {
    "provider": "marketplace: sandbox, vast.ai, io.net, or all",
    "min_vram": "minimum GPU memory in GB",
    "max_price": "maximum USD per hour for the whole offer, e.g. 1.50",
    "gpu_model": "GPU model substring, e.g. 4090 or A100",
    "region": "location substring",
    "num_gpus": "exact number of GPUs in the offer",
}

ACTIONS = (
    Action(
        name="list_gpu_instances",
        description="List GPU offers from the marketplaces (cheapest first), with filters.",
        args=CatalogArgs,
        handler=list_gpu_instances,
        read_only=True,
        aliases=("gpu.list", "gpu-instances", "gpu.availability", "offers"),
        money=("max_price",),
        items="offers",
        hints={
            **FILTER_HINTS,
            "limit": "most offers to return",
            "sort": "price, -price, vram, reliability or gpus",
        },
    ),
    Action(
        name="create_gpu_instance",
        description=(
            "Rent one GPU offer (from list_gpu_instances). Credits are held first; "
            "refused with 402 when credits or spending limits do not allow it."
        ),
        args=CreateArgs,
        handler=create_gpu_instance,
        aliases=("gpu.create", "create-gpu-instance", "rent-gpu"),
        hints={
            "provider": "the offer's provider, e.g. sandbox",
            "offer_id": "the offer's id from list_gpu_instances",
            "image": "container image to run",
            "idempotency_key": "repeat a call safely: the same key rents once",
        },
    ),
    Action(
        name="destroy_gpu_instance",
        description="Stop billing and destroy one of your GPU instances.",
        args=DestroyArgs,
        handler=destroy_gpu_instance,
        destructive=True,
        aliases=("gpu.destroy", "destroy-gpu-instance"),
        hints={
            "instance_id": "your instance's id (from list_rentals or create_gpu_instance)",
            "provider": "optional: the instance's provider, checked when given",
        },
    ),
    Action(
        name="reserve_gpus",
        description=(
            "Reserve 1-16 GPUs under one credit hold: all running before the deadline, or none."
            " count is GPUs: the instances' num_gpus add up to it (an offer with more GPUs"
            " than remain is skipped); the answer lists instances, members and gpus."
        ),
        args=ReserveBody,
        handler=reserve_gpus,
        aliases=("gpu.reserve", "reserve-gpus"),
        money=("max_price",),
        hints={**FILTER_HINTS, "count": "how many GPUs (1-16)", "image": "container image"},
    ),
    Action(
        name="list_rentals",
        description="Your GPU instances (newest first) with state, endpoint and cost so far.",
        args=NoArgs,
        handler=list_rentals,
        read_only=True,
        aliases=("gpu.rentals", "rentals", "gpu.status"),
        items="rentals",
    ),
)
