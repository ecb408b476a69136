"""Business time: monotonic per account, and bounded against a reference clock (issue 17)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
from eventsourcing.domain import Snapshot

from domain.clocks import BoundedClock
from domain.credits import CreditAccount
from domain.guardrails import GuardrailPolicy, minute_of
from tests.conftest import FixedClock

T0 = datetime(2026, 11, 1, 12, 0, 30, tzinfo=UTC)
POLICY = GuardrailPolicy(enabled=True, limits={"60MIN": 10_000_000})


def test_a_command_from_a_clock_behind_runs_at_the_newest_events_time() -> None:
    account = CreditAccount(user_id="u", at=T0)
    account.grant(50_000_000, key="g", now=T0 + timedelta(minutes=2))
    account.charge(1, key="c", now=T0 - timedelta(minutes=10), policy=POLICY)
    charged = account.collect_events()[-1]
    assert charged.at == T0 + timedelta(minutes=2)  # type: ignore[attr-defined]
    assert account.last_at == T0 + timedelta(minutes=2)
    assert account.business_time(T0) == T0 + timedelta(minutes=2)
    assert account.business_time(T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)


def test_a_reset_from_a_clock_ahead_still_covers_later_charges() -> None:
    """The issue's bypass: reset 40 s ahead (next minute), then charges at the true time."""
    account = CreditAccount(user_id="u", at=T0)
    account.grant(100_000_000, key="g", now=T0)
    account.charge(10_000_000, key="c0", now=T0, policy=POLICY)
    account.reset_windows(["60MIN"], now=T0 + timedelta(seconds=40), actor="admin", reason="r")
    account.charge(10_000_000, key="c1", now=T0 + timedelta(seconds=5), policy=POLICY)
    with pytest.raises(Exception, match="Spending limit"):
        account.charge(10_000_000, key="c2", now=T0 + timedelta(seconds=6), policy=POLICY)
    assert account.spending_report(T0, POLICY).spent["60MIN"] == 10_000_000


def test_the_bound_clamps_a_clock_ahead_logs_it_and_leaves_one_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reference = FixedClock(T0)
    offset = timedelta(hours=100)
    clock = BoundedClock(lambda: reference.now + offset, reference, timedelta(seconds=5))
    with caplog.at_level(logging.WARNING, logger="domain.clocks"):
        assert clock() == T0 + timedelta(seconds=5)
        assert clock() == T0 + timedelta(seconds=5)
    assert clock.clamped == 2
    assert caplog.text.count("ahead of the reference clock") == 1  # once a minute, not per call
    offset = timedelta(seconds=3)
    assert clock() == T0 + timedelta(seconds=3)
    offset = -timedelta(minutes=10)
    assert clock() == T0 - timedelta(minutes=10)  # behind: each account's time copes with it
    assert clock.clamped == 2
    with pytest.raises(ValueError, match="max_ahead"):
        BoundedClock(reference, reference, timedelta(seconds=-1))


def test_a_v2_snapshot_loads_with_the_newest_minute_its_state_records() -> None:
    account = CreditAccount(user_id="u", at=T0)
    account.grant(100_000_000, key="g", now=T0)
    account.charge(1_000_000, key="c", now=T0 + timedelta(minutes=7, seconds=20), policy=POLICY)
    account.reset_windows(["5MIN"], now=T0 + timedelta(minutes=3), actor="admin", reason="r")
    account.collect_events()
    taken = Snapshot.take(account)
    state = dict(taken.state)
    del state["last_at"]
    state["class_version"] = 2
    v2 = Snapshot(
        originator_id=account.id,
        originator_version=account.version,
        timestamp=T0,
        topic=taken.topic,
        state=state,
    )
    loaded = v2.mutate(None)
    assert isinstance(loaded, CreditAccount)
    newest_minute = minute_of(T0 + timedelta(minutes=7, seconds=20))
    assert loaded.last_at == datetime.fromtimestamp(newest_minute * 60, UTC)
    assert minute_of(loaded.business_time(T0)) == newest_minute  # never before what it recorded
    assert {k: v for k, v in vars(loaded).items() if k != "last_at"} == {
        k: v for k, v in vars(account).items() if k != "last_at"
    }
