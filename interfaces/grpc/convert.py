"""Exact money at the edge (``double`` USD on the wire, micro-USD inside) and message builders.

A ``double`` from the wire is read through its shortest decimal form (``repr``), so 0.1 is
exactly 0.10 USD; NaN, infinities, negatives and more than 6 decimals are refused. Amounts
sent back are ``micros / 10**6``: every micro-USD amount up to the ledger's maximum (10^9 USD)
has at most 15 significant digits, so it converts back to the same micro-USD exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from domain.errors import InvalidArgumentError
from domain.guardrails import SpendingReport, WindowState
from domain.instances import GpuInstance
from domain.marketplace import Offer
from domain.money import MICROS_PER_USD, usd_to_micros
from domain.reservations import Reservation
from infrastructure.readmodels.queries.ledger import Transaction
from interfaces.grpc.generated import gpuproxy as pb

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def usd_in(value: float, field: str) -> int:
    """A non-negative wire amount as exact micro-USD (INVALID_ARGUMENT otherwise)."""
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{field} must be a finite number", field=field)
    if value < 0:
        raise InvalidArgumentError(f"{field} must not be negative", field=field)
    return usd_to_micros(Decimal(repr(value)), field=field)


def positive_usd_in(value: float, field: str) -> int:
    micros = usd_in(value, field)
    if micros <= 0:
        raise InvalidArgumentError(f"{field} must be greater than zero", field=field)
    return micros


def usd_out(micros: int) -> float:
    """Micro-USD as the nearest double (round-trips exactly, see the module docstring)."""
    return micros / MICROS_PER_USD


def text(value: str, field: str, max_length: int, *, required: bool = False) -> str:
    """A bounded string without NUL (PostgreSQL text cannot hold one), as REST checks."""
    if "\x00" in value:
        raise InvalidArgumentError(f"{field} must not contain NUL", field=field)
    if len(value) > max_length:
        raise InvalidArgumentError(f"{field} is longer than {max_length} characters", field=field)
    if required and not value.strip():
        raise InvalidArgumentError(f"{field} is required", field=field)
    return value


def ranged(value: int, field: str, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidArgumentError(f"{field} must be between {low} and {high}", field=field)
    return value


def when(moment: datetime | None) -> datetime:
    """A Timestamp field value; unset (the epoch) when there is no moment."""
    return EPOCH if moment is None else moment


def when_micros(at_micros: int) -> datetime:
    return datetime.fromtimestamp(at_micros / 1_000_000, UTC)


def offer_message(offer: Offer) -> pb.GpuInstance:
    return pb.GpuInstance(
        id=offer.offer_id,
        provider=offer.provider,
        status="available",
        price_per_hour=usd_out(offer.price_per_hour),
        vram_gb=round(offer.vram_gb),
        gpu_model=offer.gpu_model,
        num_gpus=offer.num_gpus,
        location=offer.location,
        metadata={str(k): str(v) for k, v in offer.metadata.items() if v is not None},
        reliability=offer.reliability,
    )


def endpoint_of(gpu: GpuInstance) -> str:
    return f"http://{gpu.host}:{gpu.port}" if gpu.host and gpu.port else ""


def instance_message(gpu: GpuInstance) -> pb.GpuInstance:
    """A rented instance in the earlier proto's shape (details in ``metadata``)."""
    metadata = {
        "contract_id": gpu.provider_instance_id or "",
        "offer_id": gpu.offer_id,
        "image": gpu.image,
        "endpoint": endpoint_of(gpu),
    }
    return pb.GpuInstance(
        id=str(gpu.id),
        provider=gpu.provider,
        status=gpu.state,
        price_per_hour=usd_out(gpu.price_per_hour),
        vram_gb=round(gpu.vram_gb or 0),
        gpu_model=gpu.gpu_model,
        num_gpus=gpu.num_gpus,
        metadata={k: v for k, v in metadata.items() if v},
    )


def rental_message(gpu: GpuInstance, now: datetime) -> pb.Rental:
    return pb.Rental(
        id=str(gpu.id),
        provider=gpu.provider,
        offer_id=gpu.offer_id,
        provider_instance_id=gpu.provider_instance_id or "",
        state=gpu.state,
        gpu_model=gpu.gpu_model,
        num_gpus=gpu.num_gpus,
        price_per_hour=usd_out(gpu.price_per_hour),
        endpoint=endpoint_of(gpu),
        image=gpu.image,
        requested_at=when(gpu.requested_at),
        started_at=when(gpu.started_at),
        ended_at=when(gpu.ended_at),
        billed=usd_out(gpu.billed),
        cost_so_far=usd_out(gpu.due(now)),
        reason=gpu.reason or "",
    )


def reservation_message(reservation: Reservation) -> pb.Reservation:
    return pb.Reservation(
        id=str(reservation.id),
        state=reservation.state,
        count=reservation.count,
        provider=reservation.provider,
        instances=list(reservation.members),
        failed_attempts=[
            pb.FailedRent(
                provider=a.get("provider", ""),
                offer_id=a.get("offer_id", ""),
                reason=a.get("reason", ""),
            )
            for a in reservation.attempts
        ],
        reason=reservation.reason or "",
        held=usd_out(reservation.hold_amount),
        gpus=reservation.gpus,
    )


def transaction_message(row: Transaction) -> pb.Transaction:
    return pb.Transaction(
        id=str(row.position),
        type=row.kind,
        amount=usd_out(row.amount),
        currency="USD",
        timestamp=row.at_micros // 1_000_000,
        status="completed",
        description=row.reason,
        reference=row.reference,
        hold_id=row.hold_id,
        created_at=when_micros(row.at_micros),
    )


def payment_record(row: Any) -> pb.PaymentRecord:
    return pb.PaymentRecord(
        id=str(row.payment_id),
        status=row.state,
        amount=usd_out(row.amount),
        currency=row.currency,
        provider=row.processor,
        payment_method=str(row.method),
        credited=usd_out(row.credited),
        refunded=usd_out(row.refunded),
        failure=row.failure or "",
        created_at=when_micros(row.created_at),
    )


def credits_message(row: dict[str, int] | None) -> pb.GetCreditsResponse:
    row = row or {}
    balance, held = row.get("balance", 0), row.get("held", 0)
    return pb.GetCreditsResponse(
        credits_remaining=usd_out(balance),
        credits_available=usd_out(balance - held),
        credits_held=usd_out(held),
        credits_total=usd_out(row.get("total_granted", 0)),
        credits_spent=usd_out(row.get("total_charged", 0)),
        credits_overage=usd_out(max(0, -balance)),
        credits_cap=usd_out(row.get("cap", 0)),
        auto_renew_enabled=bool(row.get("auto_renew_enabled", 0)),
        auto_renew_threshold=usd_out(row.get("auto_renew_threshold", 0)),
        auto_renew_amount=usd_out(row.get("auto_renew_amount", 0)),
        currency="USD",
    )


@functools.lru_cache(maxsize=8192)
def _window(state: WindowState) -> pb.SpendingWindow:
    """One window's message; shared between answers (messages are never changed once built,
    and building one costs more than encoding it)."""
    return pb.SpendingWindow(
        window=state.window,
        spent=usd_out(state.spent),
        limit=usd_out(state.limit),
        remaining=usd_out(state.remaining),
        exceeded=state.exceeded,
        limited=state.limited,
        held=usd_out(state.held),
        requested=0.0,
    )


def spending_windows(report: SpendingReport) -> list[pb.SpendingWindow]:
    """Every window of the ledger's spending report (spent, held, remaining as enforced)."""
    return [_window(state) for state in report.windows]


def violation_windows(violations: Iterable[dict[str, Any]]) -> list[pb.SpendingWindow]:
    return [
        pb.SpendingWindow(
            window=str(v["window"]),
            spent=usd_out(int(v["spent"])),
            limit=usd_out(int(v["limit"])),
            remaining=usd_out(max(0, int(v["limit"]) - int(v["spent"]) - int(v["held"]))),
            exceeded=True,
            limited=True,
            held=usd_out(int(v["held"])),
            requested=usd_out(int(v["requested"])),
        )
        for v in violations
    ]
