"""A reservation's count is GPUs: members add up to it, an offer that would overshoot is
skipped, and a failed rent gives its GPUs back."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from domain.reservations import GpuBudget, Reservation, ReservationStateError, plan

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Offer:
    offer_id: str
    num_gpus: int


def _reservation(count: int) -> Reservation:
    return Reservation(
        reservation_id=uuid.uuid4(),
        owner="u1",
        count=count,
        provider="sandbox",
        filters={},
        image="img",
        hold_id="res:x",
        hold_amount=1,
        deadline=NOW + timedelta(minutes=5),
        at=NOW,
    )


def test_members_add_up_to_count_and_never_past_it() -> None:
    reservation = _reservation(16)
    reservation.add_member(uuid.uuid4(), "sandbox", "8x", 8, now=NOW)
    reservation.add_member(uuid.uuid4(), "sandbox", "4x", 4, now=NOW)
    with pytest.raises(ReservationStateError, match="does not fit"):
        reservation.add_member(uuid.uuid4(), "sandbox", "8x", 8, now=NOW)
    with pytest.raises(ReservationStateError):
        reservation.confirm(now=NOW)  # 12 of 16 GPUs
    reservation.add_member(uuid.uuid4(), "sandbox", "2x", 2, now=NOW)
    reservation.add_member(uuid.uuid4(), "sandbox", "2x", 2, now=NOW)
    reservation.confirm(now=NOW)
    assert reservation.gpus == 16
    assert len(reservation.members) == 4
    assert sorted(reservation.member_gpus.values()) == [2, 2, 4, 8]


def test_plan_skips_offers_with_more_gpus_than_remain() -> None:
    offers = [Offer("1x", 1), Offer("2x", 2), Offer("8x", 8)] * 16
    planned = plan(offers, 16)
    assert sum(o.num_gpus for o in planned) == 16
    assert [o.offer_id for o in planned].count("8x") == 1
    assert [o.num_gpus for o in plan([Offer("8x", 8)] * 4, 4)] == []  # cannot be made


def test_budget_gives_a_failed_rent_back_to_offers_that_fit() -> None:
    budget = GpuBudget([Offer("2x", 2), Offer("1x", 1), Offer("4x", 4), Offer("1x", 1)], 3)
    first, second = budget.take(), budget.take()
    assert (first, second) == (Offer("2x", 2), Offer("1x", 1))
    assert budget.take() is None  # 0 left
    assert first is not None
    budget.give_back(first)  # the 2x failed: 2 GPUs free again; the 4x is skipped
    assert budget.take() == Offer("1x", 1)
    assert budget.take() is None  # 1 left, nothing fits
