"""GPU offers, instances and reservations (``/api/v1/gpu/…``, the WebSocket, the admin views)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from msgspec import Struct

from domain.instances import GpuInstance
from domain.marketplace import Offer as OfferRecord
from domain.money import micros_to_usd
from domain.reservations import Reservation as ReservationRecord


class Offer(Struct):
    """A marketplace offer; ``price_per_hour`` in USD."""

    id: str
    provider: str
    gpu_model: str
    num_gpus: int
    vram_gb: float
    price_per_hour: str
    location: str
    reliability: float
    metadata: dict[str, Any]


class Catalog(Struct):
    """Offers, cheapest first; ``errors`` names marketplaces that did not answer."""

    offers: list[Offer]
    count: int
    errors: dict[str, str]


class Instance(Struct):
    """A rented instance; ``cost_so_far`` is what it owes at the service clock."""

    id: str
    provider: str
    offer_id: str
    provider_instance_id: str | None
    state: str
    gpu_model: str
    num_gpus: int
    price_per_hour: str
    endpoint: str | None
    image: str
    requested_at: str | None
    started_at: str | None
    ended_at: str | None
    billed: str
    cost_so_far: str
    reason: str | None


class InstanceAnswer(Struct):
    instance: Instance


class Rentals(Struct):
    rentals: list[Instance]


class Member(Struct):
    id: str
    num_gpus: int


class Reservation(Struct):
    """GPUs reserved under one hold: ``count`` asked for, ``gpus`` held by the members."""

    id: str
    state: str
    count: int
    gpus: int
    provider: str | None
    filters: dict[str, Any]
    instances: list[str]
    members: list[Member]
    failed_attempts: list[dict[str, str]]
    reason: str | None
    held: str


class ReservationAnswer(Struct):
    reservation: Reservation


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def present_offer(offer: OfferRecord) -> Offer:
    return Offer(
        id=offer.offer_id,
        provider=offer.provider,
        gpu_model=offer.gpu_model,
        num_gpus=offer.num_gpus,
        vram_gb=offer.vram_gb,
        price_per_hour=micros_to_usd(offer.price_per_hour),
        location=offer.location,
        reliability=offer.reliability,
        metadata=dict(offer.metadata),
    )


def present_instance(gpu: GpuInstance, now: datetime) -> Instance:
    return Instance(
        id=str(gpu.id),
        provider=gpu.provider,
        offer_id=gpu.offer_id,
        provider_instance_id=gpu.provider_instance_id,
        state=gpu.state,
        gpu_model=gpu.gpu_model,
        num_gpus=gpu.num_gpus,
        price_per_hour=micros_to_usd(gpu.price_per_hour),
        endpoint=f"http://{gpu.host}:{gpu.port}" if gpu.host and gpu.port else None,
        image=gpu.image,
        requested_at=_iso(gpu.requested_at),
        started_at=_iso(gpu.started_at),
        ended_at=_iso(gpu.ended_at),
        billed=micros_to_usd(gpu.billed),
        cost_so_far=micros_to_usd(gpu.due(now)),
        reason=gpu.reason or None,
    )


def present_reservation(reservation: ReservationRecord) -> Reservation:
    return Reservation(
        id=str(reservation.id),
        state=reservation.state,
        count=reservation.count,
        gpus=reservation.gpus,
        provider=reservation.provider,
        filters=dict(reservation.filters),
        instances=list(reservation.members),
        members=[
            Member(id=m, num_gpus=reservation.member_gpus.get(m, 1)) for m in reservation.members
        ],
        failed_attempts=list(reservation.attempts),
        reason=reservation.reason or None,
        held=micros_to_usd(reservation.hold_amount),
    )


def reservation_json(reservation: ReservationRecord) -> dict[str, Any]:
    """The reservation as plain data (doors that answer dicts)."""
    data: dict[str, Any] = msgspec.to_builtins(present_reservation(reservation))
    return data


def offer_json(offer: OfferRecord) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(present_offer(offer))
    return data


def instance_json(gpu: GpuInstance, now: datetime) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(present_instance(gpu, now))
    return data
