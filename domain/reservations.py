"""Reservation: 1 to 16 GPUs rented together under one credit hold, all or nothing.

requested → confirmed (every member running before the deadline) | failed (rolled back:
every member destroyed, the hold released) ; confirmed → released (the user let them go).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError, InvalidArgumentError

MAX_GPUS = 16


class ReservationStateError(DomainError):
    status = 409
    title = "Reservation state conflict"


class Reservation(Aggregate):
    @staticmethod
    def create_id(reservation_id: UUID, **_: Any) -> UUID:
        return reservation_id

    @event("Requested")
    def __init__(
        self,
        reservation_id: UUID,
        owner: str,
        count: int,
        provider: str,
        filters: dict[str, Any],
        image: str,
        hold_id: str,
        hold_amount: int,
        deadline: datetime,
        at: datetime,
    ) -> None:
        if not 1 <= count <= MAX_GPUS:
            raise InvalidArgumentError(f"count must be 1 to {MAX_GPUS}", field="count")
        self.owner = owner
        self.count = count
        self.provider = provider
        self.filters = filters
        self.image = image
        self.hold_id = hold_id
        self.hold_amount = hold_amount
        self.deadline = deadline
        self.state = "requested"
        self.members: list[str] = []  # GpuInstance ids (str)
        self.attempts: list[dict[str, str]] = []  # failed rents, for the answer and audit
        self.reason = ""

    @property
    def is_open(self) -> bool:
        return self.state == "requested"

    def add_member(self, instance_id: UUID, provider: str, offer_id: str, *, now: datetime) -> None:
        if not self.is_open:
            raise ReservationStateError(f"reservation is {self.state}")
        if len(self.members) >= self.count:
            raise ReservationStateError("reservation is already complete")
        self._member_added(
            instance_id=str(instance_id), provider=provider, offer_id=offer_id, at=now
        )

    def record_failed_rent(
        self, provider: str, offer_id: str, reason: str, *, now: datetime
    ) -> None:
        self._rent_failed(provider=provider, offer_id=offer_id, reason=reason[:300], at=now)

    def confirm(self, *, now: datetime) -> None:
        if not self.is_open or len(self.members) != self.count:
            raise ReservationStateError("only a complete, open reservation can be confirmed")
        self._confirmed(at=now)

    def fail(self, reason: str, *, now: datetime) -> None:
        if not self.is_open:
            raise ReservationStateError(f"reservation is {self.state}")
        self._failed(reason=reason[:500], at=now)

    def release(self, actor: str, *, now: datetime) -> None:
        if self.state != "confirmed":
            raise ReservationStateError(f"reservation is {self.state}")
        self._released(actor=actor, at=now)

    @event("MemberAdded")
    def _member_added(self, instance_id: str, provider: str, offer_id: str, at: datetime) -> None:
        self.members.append(instance_id)

    @event("RentFailed")
    def _rent_failed(self, provider: str, offer_id: str, reason: str, at: datetime) -> None:
        self.attempts.append({"provider": provider, "offer_id": offer_id, "reason": reason})

    @event("Confirmed")
    def _confirmed(self, at: datetime) -> None:
        self.state = "confirmed"

    @event("Failed")
    def _failed(self, reason: str, at: datetime) -> None:
        self.state = "failed"
        self.reason = reason

    @event("Released")
    def _released(self, actor: str, at: datetime) -> None:
        self.state = "released"
