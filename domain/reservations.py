"""Reservation: 1 to 16 GPUs rented together under one credit hold, all or nothing.

``count`` is GPUs: the ``num_gpus`` of the member instances add up to exactly ``count``
(an offer with more GPUs than remain is skipped, never overshot; see ``GpuBudget``).
requested → confirmed (every member running before the deadline) | failed (rolled back:
every member destroyed, the hold released) ; confirmed → released (the user let them go).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError, InvalidArgumentError

MAX_GPUS = 16


class HasGpus(Protocol):
    @property
    def num_gpus(self) -> int: ...


OfferT = TypeVar("OfferT", bound=HasGpus)


class GpuBudget(Generic[OfferT]):
    """Hands out a reservation's candidate offers, in order, so that the GPUs rented plus
    those being rented never pass ``count``: an offer with more GPUs than remain is skipped
    (it stays in the queue for a later, larger gap); a failed rent gives its GPUs back.
    """

    def __init__(self, candidates: Sequence[OfferT], count: int) -> None:
        self.queue = list(candidates)
        self.left = count

    def take(self) -> OfferT | None:
        for index, offer in enumerate(self.queue):
            if offer.num_gpus <= self.left:
                del self.queue[index]
                self.left -= offer.num_gpus
                return offer
        return None

    def give_back(self, offer: OfferT) -> None:
        self.left += offer.num_gpus


def plan(candidates: Sequence[OfferT], count: int) -> list[OfferT]:
    """The offers a reservation of ``count`` GPUs rents when every rent succeeds."""
    budget = GpuBudget(candidates, count)
    planned: list[OfferT] = []
    while (offer := budget.take()) is not None:
        planned.append(offer)
    return planned


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
        self.member_gpus: dict[str, int] = {}  # GpuInstance id -> its num_gpus
        self.gpus = 0  # GPUs the members hold (at most ``count``)
        self.attempts: list[dict[str, str]] = []  # failed rents, for the answer and audit
        self.reason = ""

    @property
    def is_open(self) -> bool:
        return self.state == "requested"

    def add_member(
        self, instance_id: UUID, provider: str, offer_id: str, num_gpus: int, *, now: datetime
    ) -> None:
        if not self.is_open:
            raise ReservationStateError(f"reservation is {self.state}")
        if num_gpus < 1 or self.gpus + num_gpus > self.count:
            raise ReservationStateError(
                f"an instance of {num_gpus} GPU(s) does not fit: "
                f"{self.gpus} of {self.count} GPUs are already reserved"
            )
        self._member_added(
            instance_id=str(instance_id),
            provider=provider,
            offer_id=offer_id,
            num_gpus=num_gpus,
            at=now,
        )

    def record_failed_rent(
        self, provider: str, offer_id: str, reason: str, *, now: datetime
    ) -> None:
        self._rent_failed(provider=provider, offer_id=offer_id, reason=reason[:300], at=now)

    def confirm(self, *, now: datetime) -> None:
        if not self.is_open or self.gpus != self.count:
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
    def _member_added(
        self, instance_id: str, provider: str, offer_id: str, at: datetime, num_gpus: int = 1
    ) -> None:
        # num_gpus = 1: events recorded before count meant GPUs (then one member, one unit)
        self.members.append(instance_id)
        self.member_gpus[instance_id] = num_gpus
        self.gpus += num_gpus

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
