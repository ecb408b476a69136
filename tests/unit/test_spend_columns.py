"""The account's spend buckets as two columns (docs/adr/0036), checked against the pair form.

``column_window_spend`` must give what the brute-force sum over ``[minute, micros]`` pairs
gives; ``column_add_spend`` and ``column_prune`` must keep the columns equal to the pairs
``add_spend`` and ``prune`` keep (both tested by brute force in ``test_guardrails``).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from domain.guardrails import (
    LONGEST_WINDOW_MINUTES,
    WINDOW_NAMES,
    add_spend,
    column_add_spend,
    column_bucket_amount,
    column_prune,
    column_window_spend,
    prune,
)
from tests.unit.test_guardrails import (
    NOW,
    amounts,
    brute_force,
    bucket_lists,
    buckets_and_resets,
    window_subsets,
)


def columns(buckets: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    return [b[0] for b in buckets], [b[1] for b in buckets]


@given(buckets_and_resets(), st.none() | window_subsets, st.integers(0, 200))
def test_column_window_spend_matches_brute_force(
    data: tuple[list[list[int]], dict[str, list[int]]],
    windows: list[str] | None,
    later: int,
) -> None:
    buckets, resets = data
    minutes, spent = columns(buckets)
    names = windows or list(WINDOW_NAMES)
    now = NOW + later
    result = column_window_spend(minutes, spent, now, resets, names)
    assert result == brute_force(buckets, now, resets, names)
    for minute in {*minutes, NOW - 1, NOW + 1}:
        expected = sum(a for m, a in buckets if m == minute)
        assert column_bucket_amount(minutes, spent, minute) == expected


@given(
    bucket_lists(),
    st.lists(st.tuples(st.integers(-LONGEST_WINDOW_MINUTES - 50, 50), amounts), max_size=60),
)
def test_column_add_and_prune_keep_what_the_pairs_keep(
    start: list[list[int]], ops: list[tuple[int, int]]
) -> None:
    pairs = [list(b) for b in start]
    minutes, spent = columns(start)
    for offset, amount in ops:  # in and out of order, into existing and new minutes
        add_spend(pairs, NOW + offset, amount)
        column_add_spend(minutes, spent, NOW + offset, amount)
        assert (minutes, spent) == columns(pairs)
        prune(pairs, NOW + offset)
        column_prune(minutes, spent, NOW + offset)
        assert (minutes, spent) == columns(pairs)
    assert minutes == sorted(set(minutes))


def test_column_prune_drops_exactly_what_is_72h_old() -> None:
    cutoff = NOW - LONGEST_WINDOW_MINUTES
    minutes, spent = [cutoff - 1, cutoff, cutoff + 1, NOW], [1, 2, 4, 8]
    column_prune(minutes, spent, NOW)
    assert (minutes, spent) == ([cutoff + 1, NOW], [4, 8])
    column_prune(minutes, spent, NOW)
    assert (minutes, spent) == ([cutoff + 1, NOW], [4, 8])
    column_prune([], [], NOW)  # nothing to drop
