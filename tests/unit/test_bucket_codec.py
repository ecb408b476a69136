"""A busy account's snapshot packs its spend buckets (docs/adr/0033) and loads back the same.

A charge every 15 s for 72 h leaves 4,320 minute buckets; as JSON pairs they were ~80 KB of
each snapshot, decoded pair by pair on every load (``balance --at`` on a busy account).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.domain import Snapshot
from hypothesis import given
from hypothesis import strategies as st

from domain.bucket_codec import PREFIX, pack, unpack
from domain.credits import CreditAccount
from domain.guardrails import LONGEST_WINDOW_MINUTES, GuardrailPolicy

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OFF = GuardrailPolicy()


@st.composite
def bucket_lists(draw: st.DrawFn) -> list[list[int]]:
    spend = draw(
        st.dictionaries(st.integers(0, 2**40), st.integers(-(2**63), 2**63 - 1), max_size=200)
    )
    return [[minute, amount] for minute, amount in sorted(spend.items())]


@given(bucket_lists())
def test_pack_then_unpack_gives_the_same_buckets(buckets: list[list[int]]) -> None:
    packed = pack(buckets)
    assert isinstance(packed, str)
    assert packed.startswith(PREFIX)
    assert unpack(packed) == buckets


def test_buckets_past_int64_stay_a_plain_list() -> None:
    buckets = [[1, 2**70], [2, 5]]
    assert pack(buckets) == buckets
    assert unpack(pack(buckets)) == buckets


def busy_account() -> CreditAccount:
    """72 h of a charge every 15 s: a bucket for every minute of the longest window."""
    account = CreditAccount(user_id="whale", at=T0)
    account.grant(10**15, key="seed", now=T0)
    for i in range(LONGEST_WINDOW_MINUTES * 4):
        account.charge(1_000 + i % 97, key=f"k{i}", now=T0 + timedelta(seconds=15 * i), policy=OFF)
    account.collect_events()
    return account


def test_a_busy_accounts_snapshot_packs_its_buckets_and_loads_the_same_state() -> None:
    account = busy_account()
    assert len(account.buckets) == LONGEST_WINDOW_MINUTES
    snapshot: Any = CreditAccount.Snapshot.take(account)
    assert isinstance(snapshot.state["buckets"], str)
    plain_bytes = len(json.dumps(Snapshot.take(account).state, default=str))
    packed_bytes = len(json.dumps(snapshot.state, default=str))
    assert len(json.dumps(account.buckets)) > 60_000  # what the snapshot used to carry
    assert len(snapshot.state["buckets"]) < 12_000
    assert packed_bytes < plain_bytes - 50_000
    loaded = snapshot.mutate(None)
    assert isinstance(loaded, CreditAccount)
    assert vars(loaded) == vars(account)
    assert account.buckets is not loaded.buckets  # the snapshot shares no state with it


def test_a_snapshot_stored_before_with_plain_buckets_still_loads() -> None:
    account = busy_account()
    old = Snapshot.take(account)  # the library's own class: buckets as [minute, micros] pairs
    assert isinstance(old.state["buckets"], list)
    assert vars(old.mutate(None)) == vars(account)
    again = CreditAccount.Snapshot(  # this class reading a plain list (stored before)
        originator_id=old.originator_id,
        originator_version=old.originator_version,
        timestamp=old.timestamp,
        topic=old.topic,
        state=dict(old.state),
    )
    assert vars(again.mutate(None)) == vars(account)
