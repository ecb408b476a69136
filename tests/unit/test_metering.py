"""Metering's money decisions (domain/metering.py): pure, no database.

The marketplace runs these on the owner's account and the instance in one transaction;
tests/integration/test_marketplace_flow.py checks them end to end.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import metering
from domain.holds import Hold
from domain.instances import due_between
from domain.metering import Due, hold_amount, renewal_due, split_due

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
LATER = T0 + timedelta(hours=2)


def hold(amount: int, captured: int = 0, expires_at: datetime = LATER) -> Hold:
    return Hold("h", amount, captured, expires_at)


@pytest.mark.parametrize(
    ("price", "seconds", "expected"),
    [
        (3_600_000, 3600, 3_600_000),  # an hour at $3.60/h
        (3_600_000, 600, 600_000),
        (1, 3600, 1),
        (1, 1, 1),  # rounded up, never 0
        (0, 3600, 1),  # a hold is at least 1 micro-USD
        (7, 1000, 2),  # 1.94 rounds up
        (3601, 3600, 3601),
    ],
)
def test_hold_amount_covers_the_time_rounded_up(price: int, seconds: int, expected: int) -> None:
    assert hold_amount(price, seconds) == expected


@given(st.integers(0, 10**9), st.integers(1, 7 * 86_400))
def test_hold_amount_equals_the_float_formula_it_replaced(price: int, seconds: int) -> None:
    assert hold_amount(price, seconds) == max(1, math.ceil(price * seconds / 3600))


def test_hold_expiry_is_twice_the_time_covered() -> None:
    assert metering.hold_expiry(T0, 3600) == T0 + timedelta(hours=2)


@pytest.mark.parametrize(
    ("owed", "billed", "the_hold", "expected"),
    [
        (100, 100, hold(1000), None),  # nothing new
        (90, 100, hold(1000), None),  # never negative
        (150, 100, hold(1000), Due(50, 0)),
        (150, 100, hold(1000, captured=980), Due(20, 30)),  # hold runs out
        (150, 100, hold(1000, captured=1000), Due(0, 50)),
        (150, 100, None, Due(0, 50)),  # no hold (released or expired away)
        (150, 100, hold(1000, expires_at=T0), Due(0, 50)),  # expired: captures nothing
    ],
)
def test_split_due(owed: int, billed: int, the_hold: Hold | None, expected: Due | None) -> None:
    assert split_due(owed, billed, the_hold, T0) == expected


@pytest.mark.parametrize(
    ("the_hold", "price", "below", "expected"),
    [
        (hold(1000), 3600, 600, False),  # 1000 s left
        (hold(1000, captured=400), 3600, 600, False),  # exactly 600 s left
        (hold(1000, captured=401), 3600, 600, True),
        (None, 3600, 600, True),
        (None, 0, 600, False),  # a free rental never needs a hold
    ],
)
def test_renewal_due(the_hold: Hold | None, price: int, below: int, expected: bool) -> None:
    assert renewal_due(the_hold, price, below) is expected


@pytest.mark.parametrize(
    ("action", "blocks", "stops"), [("stop", False, True), ("block", True, False)]
)
def test_unfunded_rental_blocks_or_stops(action: str, blocks: bool, stops: bool) -> None:
    assert metering.blocks_spend(action) is blocks
    assert metering.stops_unfunded(action) is stops


def _meter(
    price: int, hold_seconds: int, renew_below: int, gaps: list[int]
) -> tuple[int, int, int, int]:
    """Meter at each gap's end like MarketplaceService.meter; returns (billed, captured,
    extra, end second); asserts each hold's invariant on the way."""
    current = Hold(
        "h0", hold_amount(price, hold_seconds), 0, metering.hold_expiry(T0, hold_seconds)
    )
    billed = captured = extra = second = 0
    for number, gap in enumerate(gaps, 1):
        second += gap
        now = T0 + timedelta(seconds=second)
        step = split_due(due_between(price, T0, now), billed, current, now)
        if step is not None:
            assert 0 <= step.from_hold <= current.capturable_at(now)
            current = replace(current, captured=current.captured + step.from_hold)
            assert 0 <= current.captured <= current.amount
            billed, captured, extra = (
                billed + step.total,
                captured + step.from_hold,
                extra + step.extra,
            )
        if renewal_due(current, price, renew_below):
            amount = hold_amount(price, hold_seconds)
            current = Hold(f"h{number}", amount, 0, metering.hold_expiry(now, hold_seconds))
    return billed, captured, extra, second


@settings(max_examples=300, deadline=None)
@given(
    price=st.integers(0, 50_000_000),
    hold_seconds=st.integers(60, 7200),
    gaps=st.lists(st.integers(0, 20_000), max_size=30),
)
def test_captures_and_extras_add_up_to_price_times_time(
    price: int, hold_seconds: int, gaps: list[int]
) -> None:
    renew_below = hold_seconds // 6
    billed, captured, extra, second = _meter(price, hold_seconds, renew_below, gaps)
    assert billed == captured + extra == due_between(price, T0, T0 + timedelta(seconds=second))


@settings(max_examples=300, deadline=None)
@given(
    price=st.integers(0, 50_000_000),
    hold_seconds=st.integers(60, 7200),
    data=st.data(),
)
def test_metering_at_least_every_renew_window_never_charges_past_the_hold(
    price: int, hold_seconds: int, data: st.DataObject
) -> None:
    renew_below = hold_seconds // 6
    gaps = data.draw(st.lists(st.integers(0, renew_below), max_size=30))
    _, _, extra, _ = _meter(price, hold_seconds, renew_below, gaps)
    assert extra == 0
