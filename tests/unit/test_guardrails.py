"""Guard-rail arithmetic: sliding-window spend over one-minute buckets, checked by brute force."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.guardrails import (
    LONGEST_WINDOW_MINUTES,
    WINDOW_MINUTES,
    WINDOW_NAMES,
    GuardrailPolicy,
    add_spend,
    bucket_amount,
    env_name,
    minute_of,
    normalise_window,
    prune,
    window_spend,
)

NOW = 29_500_000  # a minute in late 2026

ages = st.integers(min_value=0, max_value=LONGEST_WINDOW_MINUTES + 200)
amounts = st.integers(min_value=1, max_value=10**9)
window_subsets = st.lists(st.sampled_from(WINDOW_NAMES), min_size=1, unique=True)


@st.composite
def bucket_lists(draw: st.DrawFn) -> list[list[int]]:
    spend = draw(st.dictionaries(ages, amounts, max_size=40))
    return [[NOW - age, amount] for age, amount in sorted(spend.items(), reverse=True)]


@st.composite
def buckets_and_resets(
    draw: st.DrawFn,
) -> tuple[list[list[int]], dict[str, list[int]]]:
    buckets = draw(bucket_lists())
    names = draw(st.lists(st.sampled_from(WINDOW_NAMES), unique=True, max_size=6))
    resets: dict[str, list[int]] = {}
    for name in names:
        if buckets and draw(st.booleans()):
            minute = draw(st.sampled_from([m for m, _ in buckets]))  # reset inside a bucket
        else:
            minute = NOW - draw(ages)
        at_reset = draw(st.integers(0, bucket_amount(buckets, minute)))
        resets[name] = [minute, at_reset]
    return buckets, resets


def brute_force(
    buckets: Sequence[Sequence[int]],
    now: int,
    resets: Mapping[str, Sequence[int]],
    windows: Sequence[str],
) -> dict[str, int]:
    totals = {}
    for name in windows:
        width = WINDOW_MINUTES[name]
        reset = resets.get(name)
        if reset is not None and now - reset[0] < width:
            reset_minute, at_reset = reset
            totals[name] = sum(
                amount - at_reset if minute == reset_minute else amount
                for minute, amount in buckets
                if minute >= reset_minute
            )
        else:
            totals[name] = sum(amount for minute, amount in buckets if now - width < minute <= now)
    return totals


def test_window_table() -> None:
    assert len(WINDOW_NAMES) == 17
    assert list(WINDOW_MINUTES.values()) == sorted(WINDOW_MINUTES.values())
    assert WINDOW_MINUTES["60MIN"] == 60
    assert WINDOW_MINUTES["48H"] == 48 * 60
    assert LONGEST_WINDOW_MINUTES == WINDOW_MINUTES["72H"] == 72 * 60
    assert env_name("60MIN") == "GUARDRAILS_MAX_60MIN_RATE"


def test_minute_of() -> None:
    at = datetime(2026, 11, 1, 12, 0, 59, 999_999, tzinfo=UTC)
    assert minute_of(at) == minute_of(at.replace(second=0, microsecond=0))
    assert minute_of(at + timedelta(microseconds=1)) == minute_of(at) + 1
    assert minute_of(datetime(1970, 1, 1, 0, 2, tzinfo=UTC)) == 2


def test_window_spend_example() -> None:
    buckets = [[NOW - 60, 40], [NOW - 5, 20], [NOW - 4, 10], [NOW, 1]]
    spent = window_spend(buckets, NOW)
    assert spent["5MIN"] == 11
    assert spent["15MIN"] == 31
    assert spent["60MIN"] == 31  # a bucket exactly 60 minutes old is outside the window
    assert spent["90MIN"] == 71
    assert spent["72H"] == 71
    assert window_spend([], NOW) == dict.fromkeys(WINDOW_NAMES, 0)


def test_window_spend_after_reset_counts_only_later_spend() -> None:
    buckets = [[NOW - 30, 100], [NOW - 10, 50], [NOW - 2, 7]]
    # Reset of 60MIN happened 10 minutes ago when that minute's bucket held 30 of its 50.
    resets = {"60MIN": [NOW - 10, 30]}
    spent = window_spend(buckets, NOW, resets)
    assert spent["60MIN"] == 20 + 7
    assert spent["90MIN"] == 157  # other windows are unaffected
    # The reset applies while it is inside the window (59 minutes old here) ...
    assert window_spend(buckets, NOW + 49, resets)["60MIN"] == 27
    assert window_spend(buckets, NOW + 49)["60MIN"] == 57
    # ... and once it is as old as the window, the window is plain again.
    assert window_spend(buckets, NOW + 50, resets)["60MIN"] == 7
    assert window_spend(buckets, NOW + 50)["60MIN"] == 7


@given(buckets_and_resets(), st.none() | window_subsets)
def test_window_spend_matches_brute_force(
    data: tuple[list[list[int]], dict[str, list[int]]], windows: list[str] | None
) -> None:
    buckets, resets = data
    names = list(WINDOW_NAMES) if windows is None else windows
    if windows is None:
        result = window_spend(buckets, NOW, resets)
    else:
        result = window_spend(buckets, NOW, resets, windows)
    assert result == brute_force(buckets, NOW, resets, names)
    assert list(result) == names


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 1000)), max_size=60))
def test_add_spend_keeps_buckets_sorted_and_sums(ops: list[tuple[int, int]]) -> None:
    buckets: list[list[int]] = []
    for minute, amount in ops:
        add_spend(buckets, NOW + minute, amount)
    minutes = [minute for minute, _ in buckets]
    assert minutes == sorted(set(minutes)), "buckets must be strictly increasing by minute"
    expected: Counter[int] = Counter()
    for minute, amount in ops:
        expected[NOW + minute] += amount
    assert dict(buckets) == dict(expected)
    for minute, amount in expected.items():
        assert bucket_amount(buckets, minute) == amount


def test_add_spend_out_of_order_example() -> None:
    buckets: list[list[int]] = []
    for minute, amount in [(10, 1), (12, 2), (11, 3), (10, 4), (12, 5), (5, 6), (11, 7)]:
        add_spend(buckets, minute, amount)
    assert buckets == [[5, 6], [10, 5], [11, 10], [12, 7]]
    assert bucket_amount(buckets, 9) == 0
    assert bucket_amount(buckets, 13) == 0


@given(bucket_lists(), st.integers(-100, LONGEST_WINDOW_MINUTES + 100))
def test_prune_drops_only_buckets_outside_the_longest_window(
    buckets: list[list[int]], shift: int
) -> None:
    now = NOW + shift
    kept = [list(b) for b in buckets if b[0] > now - LONGEST_WINDOW_MINUTES]
    before = window_spend(buckets, now)
    prune(buckets, now)
    assert buckets == kept
    assert window_spend(buckets, now) == before


def test_prune_boundary() -> None:
    cutoff = NOW - LONGEST_WINDOW_MINUTES
    buckets = [[cutoff - 1, 1], [cutoff, 2], [cutoff + 1, 4], [NOW, 8]]
    prune(buckets, NOW)
    assert buckets == [[cutoff + 1, 4], [NOW, 8]]  # exactly 72h old counts in no window
    prune(buckets, NOW)
    assert buckets == [[cutoff + 1, 4], [NOW, 8]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("60min", "60MIN"),
        ("60MIN", "60MIN"),
        ("48h", "48H"),
        ("72H", "72H"),
        (" 5Min ", "5MIN"),
        ("1440min", "1440MIN"),
    ],
)
def test_normalise_window_accepts(name: str, expected: str) -> None:
    assert normalise_window(name) == expected


@pytest.mark.parametrize(
    "name", ["", "60", "60m", "60 min", "1h", "24h", "3600s", "MIN", "-5MIN", "5MINS", "junk"]
)
def test_normalise_window_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="unknown window"):
        normalise_window(name)


def test_every_window_name_round_trips_in_lower_case() -> None:
    for name in WINDOW_NAMES:
        assert normalise_window(name.lower()) == name


def test_effective_limits_disabled_keeps_the_users_own_limits() -> None:
    """The switch governs only the defaults: limits set for a user are always in force."""
    policy = GuardrailPolicy(enabled=False, limits={"60MIN": 100})
    assert policy.effective_limits({"5MIN": 10}) == {"5MIN": 10}
    assert policy.effective_limits({"5MIN": 10, "72H": 0}) == {"5MIN": 10}
    assert policy.effective_limits({}) == {}
    assert GuardrailPolicy().effective_limits({}) == {}


def test_effective_limits_overrides_win_and_zero_is_off() -> None:
    policy = GuardrailPolicy(enabled=True, limits={"60MIN": 100, "5MIN": 0, "72H": 900})
    assert policy.effective_limits({}) == {"60MIN": 100, "72H": 900}
    assert policy.effective_limits({"60MIN": 50, "15MIN": 7, "72H": 0}) == {
        "60MIN": 50,
        "15MIN": 7,
    }
    assert policy.effective_limits({"60MIN": 500}) == {"60MIN": 500, "72H": 900}


limit_maps = st.dictionaries(st.sampled_from(WINDOW_NAMES), st.integers(0, 10**6))


@given(st.booleans(), limit_maps, limit_maps)
def test_effective_limits_property(
    enabled: bool, defaults: dict[str, int], overrides: dict[str, int]
) -> None:
    result = GuardrailPolicy(enabled=enabled, limits=defaults).effective_limits(overrides)
    expected = {}
    for name in WINDOW_NAMES:  # the switch governs only the defaults
        limit = overrides.get(name, defaults.get(name, 0) if enabled else 0)
        if limit:
            expected[name] = limit
    assert result == expected
