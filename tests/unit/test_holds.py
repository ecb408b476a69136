"""Holds as values (domain/holds.py) and the ids a rental's holds get."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from domain.credits import CreditAccount
from domain.guardrails import GuardrailPolicy
from domain.holds import Hold, is_rental_hold, next_rental_hold_id, rental_hold_id
from domain.instances import GpuInstance

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
ID = UUID("00000000-0000-0000-0000-000000000001")


def test_hold_remaining_and_live() -> None:
    hold = Hold("h", 100, 30, T0)
    assert hold.remaining == 70
    assert hold.live_at(T0 - timedelta(microseconds=1))
    assert not hold.live_at(T0)
    assert hold.capturable_at(T0 - timedelta(seconds=1)) == 70
    assert hold.capturable_at(T0) == 0
    with pytest.raises(AttributeError):
        hold.captured = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (f"gpu:{ID}:1", f"gpu:{ID}:2"),
        (f"gpu:{ID}:41", f"gpu:{ID}:42"),
        ("res:7", f"gpu:{ID}:1"),  # a reservation's shared hold: the rental's first own
        ("gpu:00000000-0000-0000-0000-000000000002:5", f"gpu:{ID}:1"),  # another rental's
    ],
)
def test_next_rental_hold_id(current: str, expected: str) -> None:
    assert next_rental_hold_id(ID, current) == expected


def test_rental_hold_ids() -> None:
    assert rental_hold_id(ID) == f"gpu:{ID}:1"
    assert is_rental_hold(ID, rental_hold_id(ID, 3))
    assert not is_rental_hold(ID, "res:1")


def _gpu(hold_id: str) -> GpuInstance:
    return GpuInstance(
        instance_id=ID,
        owner="u",
        provider="p",
        offer_id="o",
        gpu_model="A100",
        num_gpus=1,
        price_per_hour=3_600_000,
        provider_price_per_hour=3_000_000,
        hold_id=hold_id,
        image="img",
        at=T0,
    )


def test_gpu_instance_names_its_holds() -> None:
    own = _gpu(rental_hold_id(ID))
    assert own.owns_hold
    assert own.next_hold_id() == rental_hold_id(ID, 2)
    shared = _gpu("res:1")
    assert not shared.owns_hold
    assert shared.next_hold_id() == rental_hold_id(ID)


def test_credit_account_hands_out_hold_values_and_keeps_its_stored_shape() -> None:
    account = CreditAccount(user_id="u", at=T0)
    account.grant(1_000, key="g", now=T0)
    policy = GuardrailPolicy()
    soon, later = T0 + timedelta(minutes=5), T0 + timedelta(hours=1)
    account.place_hold("a", 100, expires_at=soon, key="ha", now=T0, policy=policy)
    account.place_hold("b", 200, expires_at=later, key="hb", now=T0, policy=policy)
    account.capture("b", 50, key="cb", now=T0)
    assert account.hold("b") == Hold("b", 200, 50, later)
    assert account.hold("missing") is None
    assert account.live_holds(T0) == [Hold("a", 100, 0, soon), Hold("b", 200, 50, later)]
    assert account.live_holds(soon) == [Hold("b", 200, 50, later)]
    assert account.held_at(soon) == 150
    assert account.holds["b"] == {"amount": 200, "captured": 50, "expires_at": later}
