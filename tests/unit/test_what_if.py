"""What-if replay, pure: tighter limits never bill more; refusals, markup, auto-renew."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidArgumentError
from domain.guardrails import GuardrailPolicy
from domain.what_if import GpuPrice, Rules, check_range, what_if

USD = 1_000_000
T0 = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Ev:
    name: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)


def history(charges: list[tuple[int, int]], funds: int = 1_000 * USD) -> list[Ev]:
    events = [Ev("Opened", T0), Ev("Granted", T0, {"amount": funds, "source": "payment"})]
    at = T0
    for minutes, amount in charges:
        at += timedelta(minutes=minutes)
        events.append(Ev("Charged", at, {"amount": amount}))
    return events


def bill(events: list[Ev], limits: dict[str, int]) -> int:
    end = T0 + timedelta(days=90)
    return what_if(events, T0, end, Rules(limits=limits)).replay.bill


within_an_hour = st.lists(  # gaps of at most 4 minutes, 12 charges: no spend slides out
    st.tuples(st.integers(0, 4), st.integers(1, 20 * USD)), min_size=1, max_size=12
)
any_time = st.lists(
    st.tuples(st.integers(0, 200), st.integers(1, 20 * USD)), min_size=1, max_size=25
)
limit = st.integers(1, 60 * USD)


@settings(max_examples=200, deadline=None)
@given(within_an_hour, limit, limit, limit, limit, st.integers(1, 300 * USD))
def test_tighter_limits_never_bill_more(
    spend: list[tuple[int, int]], a: int, b: int, c: int, d: int, funds: int
) -> None:
    """Every window tighter (or equal), the same funds: never a larger bill. Holds while no
    spend slides out of a window (see the sliding counterexample below)."""
    (t1, l1), (t2, l2) = sorted((a, b)), sorted((c, d))
    events = history(spend, funds)
    tight = bill(events, {"60MIN": t1, "120MIN": t2})
    assert tight <= bill(events, {"60MIN": l1, "120MIN": l2})
    assert bill(events, {"60MIN": l1}) <= bill(events, {})


@settings(max_examples=200, deadline=None)
@given(any_time, limit, limit)
def test_limits_never_bill_more_than_none_and_keep_every_window(
    spend: list[tuple[int, int]], a: int, b: int
) -> None:
    events = history(spend, funds=10**12)
    limits = {"15MIN": a, "120MIN": b}
    result = what_if(events, T0, T0 + timedelta(days=90), Rules(limits=limits))
    assert result.replay.bill <= bill(events, {}) == result.real.bill
    refused = {r.at for r in result.replay.refused}
    kept = [(at, amount) for at, amount in _times(spend) if at not in refused]
    for window, minutes in (("15MIN", 15), ("120MIN", 120)):
        for at, _ in kept:  # a window ending at each kept charge holds at most its limit
            span = [x for t, x in kept if at - timedelta(minutes=minutes) < t <= at]
            assert sum(span) <= limits[window]


def _times(spend: list[tuple[int, int]]) -> list[tuple[datetime, int]]:
    at, out = T0, []
    for minutes, amount in spend:
        at += timedelta(minutes=minutes)
        out.append((at, amount))
    return out


def test_sliding_windows_can_make_a_tighter_limit_bill_more() -> None:
    """Not a bug: refusing 7 USD at 00:30 leaves the window free for 9 USD at 01:20."""
    events = history([(0, 3 * USD), (30, 7 * USD), (50, 9 * USD)])
    assert bill(events, {"60MIN": 9 * USD}) == 12 * USD
    assert bill(events, {"60MIN": 12 * USD}) == 10 * USD


def test_a_limit_refuses_and_says_when_and_which_window() -> None:
    events = history([(1, 6 * USD), (1, 5 * USD), (60, 5 * USD)])
    start = T0 + timedelta(seconds=1)  # after the payment: the lowest balance is after charges
    result = what_if(events, start, T0 + timedelta(days=1), Rules(limits={"60MIN": 10 * USD}))
    assert result.real.bill == 16 * USD
    assert result.replay.bill == 11 * USD
    [refused] = result.replay.refused
    assert (refused.at, refused.amount, refused.windows) == (
        T0 + timedelta(minutes=2),
        5 * USD,
        ("60MIN",),
    )
    assert result.replay.lowest_balance == 1_000 * USD - 11 * USD


def test_the_recorded_rules_give_the_recorded_bill_and_markup_reprices_gpu_time() -> None:
    events = [
        Ev("Opened", T0),
        Ev("Granted", T0, {"amount": 10 * USD, "source": "payment"}),
        Ev(
            "HoldCaptured",
            T0 + timedelta(minutes=5),
            {"amount": 2_200_000, "reason": "GPU time", "hold_id": "h"},
        ),
        Ev(
            "HoldCaptured", T0 + timedelta(minutes=6), {"amount": 4_000, "reason": "proxy requests"}
        ),
        Ev("Charged", T0 + timedelta(minutes=7), {"amount": 300, "reason": "prediction"}),
    ]
    end = T0 + timedelta(days=1)
    same = what_if(events, T0, end, Rules(markup_ppm=100_000, recorded_markup_ppm=100_000))
    assert same.replay.bill == same.real.bill == 2_204_300
    doubled = what_if(events, T0, end, Rules(markup_ppm=1_200_000, recorded_markup_ppm=100_000))
    assert doubled.replay.bill == 4_400_000 + 4_000 + 300  # GPU time only
    proxy = what_if(events, T0, end, Rules(proxy_price=500, recorded_proxy_price=1_000))
    assert proxy.replay.bill == 2_200_000 + 2_000 + 300  # proxy requests only
    gpus = {"h": GpuPrice("H100", 2, 2_200_000)}  # 2 GPUs at 1.00 + 10 %: 2.20 an hour
    priced = Rules(gpu_prices={"H100": 3 * USD, "A100": 1}, recorded_markup_ppm=100_000)
    assert what_if(events, T0, end, priced, gpus).replay.bill == 6_600_000 + 4_000 + 300


def test_auto_renew_firing_and_the_lowest_balance_under_other_limits() -> None:
    renew = {"enabled": True, "threshold": 5 * USD, "amount": 10 * USD, "payment_method": "pm"}
    events = [
        Ev("Opened", T0),
        Ev("Granted", T0, {"amount": 10 * USD, "source": "payment"}),
        Ev("AutoRenewConfigured", T0, renew),
        Ev("Charged", T0 + timedelta(minutes=1), {"amount": 3 * USD}),
        Ev("Charged", T0 + timedelta(minutes=2), {"amount": 3 * USD}),
    ]
    end, start = T0 + timedelta(days=1), T0 + timedelta(seconds=1)
    free = what_if(events, start, end, Rules())
    assert free.replay.auto_renew_at == [T0 + timedelta(minutes=2)]
    assert free.replay.lowest_balance == 4 * USD
    limited = what_if(events, start, end, Rules(policy=GuardrailPolicy(True, {"5MIN": 4 * USD})))
    assert limited.replay.auto_renew_at == []
    assert (limited.replay.bill, limited.replay.lowest_balance) == (3 * USD, 7 * USD)


def test_history_before_the_period_sets_the_opening_state() -> None:
    events = history([(0, 8 * USD), (30, 1 * USD)], funds=20 * USD)
    start = T0 + timedelta(minutes=10)  # the 8 USD charge is before it, still in the window
    result = what_if(events, start, start + timedelta(days=1), Rules(limits={"60MIN": 8 * USD}))
    assert result.replay.opening == result.real.opening == 12 * USD
    assert (result.replay.bill, result.real.bill) == (0, 1 * USD)


@pytest.mark.parametrize("days", [0, -1, 94])
def test_the_period_is_bounded(days: int) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        check_range(T0, T0 + timedelta(days=days))
    assert info.value.details.get("field") == "to"
