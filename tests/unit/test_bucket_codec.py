"""A busy account's snapshot packs its spend buckets (docs/adr/0033) and loads back the same.

A charge every 15 s for 72 h leaves 4,320 minute buckets; as JSON pairs they were ~80 KB of
each snapshot, decoded pair by pair on every load (``balance --at`` on a busy account). The
account keeps them as two columns (docs/adr/0036), which the packed form loads straight into.
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
def test_pack_then_unpack_gives_the_same_columns(buckets: list[list[int]]) -> None:
    minutes, amounts = [m for m, _ in buckets], [a for _, a in buckets]
    packed = pack(minutes, amounts)
    assert isinstance(packed, str)
    assert packed.startswith(PREFIX)
    assert unpack(packed) == (minutes, amounts)
    assert unpack(buckets) == (minutes, amounts)  # pairs, as stored before ADR 0033


def test_buckets_past_int64_stay_a_plain_list() -> None:
    buckets = [[1, 2**70], [2, 5]]
    assert pack([1, 2], [2**70, 5]) == buckets
    assert unpack(pack([1, 2], [2**70, 5])) == ([1, 2], [2**70, 5])


def busy_account() -> CreditAccount:
    """72 h of a charge every 15 s: a bucket for every minute of the longest window."""
    account = CreditAccount(user_id="whale", at=T0)
    account.grant(10**15, key="seed", now=T0)
    for i in range(LONGEST_WINDOW_MINUTES * 4):
        account.charge(1_000 + i % 97, key=f"k{i}", now=T0 + timedelta(seconds=15 * i), policy=OFF)
    account.collect_events()
    return account


def v3_state(account: CreditAccount, buckets: Any) -> dict[str, Any]:
    """The state the code before ADR 0036 stored: ``buckets`` instead of the two columns."""
    state = dict(Snapshot.take(account).state)
    del state["spend_minutes"], state["spend_amounts"]
    state["buckets"] = buckets
    state["class_version"] = 3
    return state


def test_a_busy_accounts_snapshot_packs_its_buckets_and_loads_the_same_state() -> None:
    account = busy_account()
    assert len(account.spend_minutes) == len(account.spend_amounts) == LONGEST_WINDOW_MINUTES
    snapshot: Any = CreditAccount.Snapshot.take(account)
    assert isinstance(snapshot.state["buckets"], str)
    assert "spend_minutes" not in snapshot.state
    assert len(json.dumps(account.buckets)) > 60_000  # what the snapshot carried before 0033
    assert len(snapshot.state["buckets"]) < 12_000
    loaded = snapshot.mutate(None)
    assert isinstance(loaded, CreditAccount)
    assert vars(loaded) == vars(account)
    assert type(loaded.spend_minutes) is list
    assert type(loaded.spend_amounts) is list
    assert account.spend_minutes is not loaded.spend_minutes  # no state shared with it
    assert loaded.window_spend(T0 + timedelta(hours=72)) == account.window_spend(
        T0 + timedelta(hours=72)
    )


def test_a_v4_snapshot_keeps_the_layout_the_code_before_reads() -> None:
    """The same keys as a v3 snapshot, ``buckets`` packed the same way: a replica on the
    code before ADR 0036 loads it (it ignores the higher ``class_version``)."""
    account = busy_account()
    state = CreditAccount.Snapshot.take(account).state
    old = v3_state(account, pack(account.spend_minutes, account.spend_amounts))
    assert set(state) == set(old)
    assert {**state, "class_version": 3} == old


def test_snapshots_stored_before_still_load() -> None:
    account = busy_account()
    taken = Snapshot.take(account)
    stored_before = {
        # ADR 0033's packed form under this class's topic, and the plain pairs under the
        # library's own (before ADR 0033)
        "packed v3": (CreditAccount.Snapshot, v3_state(account, pack(*unpack(account.buckets)))),
        "plain v3": (Snapshot, v3_state(account, account.buckets)),
        "plain v3, this class": (CreditAccount.Snapshot, v3_state(account, account.buckets)),
    }
    for label, (cls, state) in stored_before.items():
        old = cls(
            originator_id=taken.originator_id,
            originator_version=taken.originator_version,
            timestamp=taken.timestamp,
            topic=taken.topic,
            state=state,
        )
        assert vars(old.mutate(None)) == vars(account), label
