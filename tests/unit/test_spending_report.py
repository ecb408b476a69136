"""The spending report says exactly what enforcement decides (issue 17, item 3).

Random account states (charges, holds, captures, resets, over hours and with a writer clock
that goes back), random limits and a random reader clock: the report's ``remaining`` per
window admits an amount iff ``check_spend`` does, with the same spent and held per window,
and iff a real charge at that instant applies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.credits import CreditAccount
from domain.errors import SpendingLimitExceededError
from domain.guardrails import WINDOW_NAMES, GuardrailPolicy

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OFF = GuardrailPolicy()
USD = 1_000_000

ops = st.lists(
    st.one_of(
        st.tuples(st.just("charge"), st.integers(1, 5 * USD), st.integers(-600, 3_600)),
        st.tuples(st.just("hold"), st.integers(1, 5 * USD), st.integers(1, 7_200)),
        st.tuples(st.just("capture"), st.integers(1, 5 * USD), st.integers(-600, 600)),
        st.tuples(st.just("reset"), st.sampled_from(WINDOW_NAMES), st.integers(-600, 600)),
    ),
    max_size=25,
)
policies = st.dictionaries(st.sampled_from(WINDOW_NAMES), st.integers(0, 40 * USD), max_size=6).map(
    lambda limits: GuardrailPolicy(enabled=True, limits=limits)
)


def build(steps: list[tuple[Any, ...]]) -> tuple[CreditAccount, datetime]:
    """An account after ``steps``; the writer clock moves by each step's seconds (also back)."""
    now = T0
    account = CreditAccount(user_id="u", at=now)
    account.grant(10**12, key="funds", now=now)
    for index, (kind, value, seconds) in enumerate(steps):
        now += timedelta(seconds=seconds)
        key = f"k{index}"
        if kind == "charge":
            account.charge(value, key=key, now=now, policy=OFF)
        elif kind == "hold":
            expires_at = account.business_time(now) + timedelta(seconds=seconds)
            account.place_hold(
                f"h{index}", value, expires_at=expires_at, key=key, now=now, policy=OFF
            )
        elif kind == "capture":
            live = [
                h for h, v in account.holds.items() if v["expires_at"] > account.business_time(now)
            ]
            if live:
                hold = account.holds[live[0]]
                amount = min(value, hold["amount"] - hold["captured"])
                if amount > 0:
                    account.capture(live[0], amount, key=key, now=now)
        else:
            account.reset_windows([value], now=now, actor="admin", reason="ticket")
    account.collect_events()
    return account, now


def refusal(call: Callable[[], object]) -> list[dict[str, Any]]:
    """The violations ``call`` is refused with (none if it passes)."""
    try:
        call()
    except SpendingLimitExceededError as exc:
        return exc.violations
    return []


@settings(max_examples=300, deadline=None)
@given(
    steps=ops,
    policy=policies,
    reader=st.integers(-900, 7_200),
    amount=st.integers(1, 20 * USD),
)
def test_the_report_admits_an_amount_iff_check_spend_and_a_charge_do(
    steps: list[tuple[Any, ...]], policy: GuardrailPolicy, reader: int, amount: int
) -> None:
    account, last = build(steps)
    now = last + timedelta(seconds=reader)  # a reader clock behind the writer's, or ahead
    report = account.spending_report(now, policy)
    assert report.as_of == account.business_time(now)
    refused = {w.window: w for w in report.windows if w.limited and amount > w.remaining}
    assert report.allows(amount) == (not refused)
    violations = refusal(lambda: account.check_spend(amount, now, policy))
    assert {v["window"] for v in violations} == set(refused)
    for v in violations:
        window = refused[v["window"]]
        assert (v["spent"], v["held"], v["limit"]) == (window.spent, window.held, window.limit)
    charged = copy.deepcopy(account)
    applied = not refusal(lambda: charged.charge(amount, key="probe", now=now, policy=policy))
    assert applied == (not refused)
    exceeded = set(report.exceeded)
    assert exceeded == {w.window for w in report.windows if w.limited and w.remaining < 1}


def test_holds_count_in_the_report_as_they_do_in_enforcement() -> None:
    """The issue's case: 9.00 held of a 10.00 limit leaves 1.00, and 2.00 is refused."""
    policy = GuardrailPolicy(enabled=True, limits={"60MIN": 10 * USD})
    account = CreditAccount(user_id="u", at=T0)
    account.grant(100 * USD, key="funds", now=T0)
    account.place_hold(
        "lease", 9 * USD, expires_at=T0 + timedelta(hours=1), key="h", now=T0, policy=policy
    )
    report = account.spending_report(T0, policy)
    assert report.held == 9 * USD
    assert report.remaining["60MIN"] == 1 * USD
    assert report.exceeded == []
    assert not report.allows(2 * USD)
    assert report.allows(1 * USD)
    # Past the hold's expiry it no longer counts, in the report as in a charge.
    later = T0 + timedelta(hours=1)
    assert account.spending_report(later, policy).remaining["60MIN"] == 10 * USD
    account.charge(10 * USD, key="c", now=later, policy=policy)


def test_a_reader_clock_behind_the_newest_event_still_counts_its_spend() -> None:
    """Spend recorded by a writer ahead is counted by a reader behind (no bucket 'after now')."""
    policy = GuardrailPolicy(enabled=True, limits={"5MIN": 10 * USD})
    account = CreditAccount(user_id="u", at=T0)
    account.grant(100 * USD, key="funds", now=T0)
    account.charge(4 * USD, key="c", now=T0 + timedelta(minutes=2), policy=policy)
    behind = T0 - timedelta(minutes=10)
    report = account.spending_report(behind, policy)
    assert report.spent["5MIN"] == 4 * USD
    assert report.remaining["5MIN"] == 6 * USD
    assert report.as_of == T0 + timedelta(minutes=2)
