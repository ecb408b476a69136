"""LedgerService end to end on SQLite and PostgreSQL: rules, errors, idempotency, caches."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from domain.errors import (
    AccountNotFoundError,
    HoldConflictError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    SpendingLimitExceededError,
)
from domain.guardrails import GuardrailPolicy
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock

USD = 1_000_000


def test_grant_and_charge_are_idempotent(container: Container) -> None:
    ledger = container.ledger
    assert ledger.grant("u1", 10 * USD, key="g").applied
    assert not ledger.grant("u1", 10 * USD, key="g").applied
    with pytest.raises(IdempotencyConflictError):
        ledger.grant("u1", 11 * USD, key="g")
    assert ledger.charge("u1", USD, key="c").applied
    assert not ledger.charge("u1", USD, key="c").applied
    view = ledger.account("u1")
    assert (view.balance, view.total_granted, view.total_charged) == (9 * USD, 10 * USD, USD)
    assert view.version == 3  # opened, granted, charged: the replays recorded nothing


def test_insufficient_credits_changes_nothing(container: Container) -> None:
    ledger = container.ledger
    ledger.grant("u1", USD, key="g")
    before = ledger.account("u1")
    with pytest.raises(InsufficientCreditsError) as info:
        ledger.charge("u1", 2 * USD, key="c")
    assert info.value.status == 402
    after = ledger.account("u1")
    assert (after.version, after.balance) == (before.version, before.balance)


def test_overage_cap_allows_going_negative_down_to_the_cap(container: Container) -> None:
    ledger = container.ledger
    ledger.grant("u1", USD, key="g")
    ledger.set_cap("u1", USD // 2, actor="admin")
    ledger.charge("u1", USD + USD // 2, key="c1")
    view = ledger.account("u1")
    assert (view.balance, view.overage) == (-(USD // 2), USD // 2)
    with pytest.raises(InsufficientCreditsError):
        ledger.charge("u1", 1, key="c2")


def test_holds_place_capture_release_and_expire(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    ledger.grant("u1", 10 * USD, key="g")
    expires = clock.now + timedelta(minutes=10)
    ledger.place_hold("u1", "h1", 4 * USD, expires_at=expires, key="h1")
    assert ledger.account("u1").available == 6 * USD
    with pytest.raises(InsufficientCreditsError):
        ledger.charge("u1", 7 * USD, key="too-much")
    ledger.capture("u1", "h1", USD, key="cap1")
    ledger.capture("u1", "h1", USD, key="cap2")
    with pytest.raises(HoldConflictError):
        ledger.capture("u1", "h1", 3 * USD, key="cap3")
    view = ledger.account("u1")
    assert (view.balance, view.held, view.available) == (8 * USD, 2 * USD, 6 * USD)
    ledger.release("u1", "h1", key="rel")
    with pytest.raises(HoldNotFoundError):
        ledger.capture("u1", "h1", 1, key="cap4")
    assert ledger.account("u1").available == 8 * USD

    ledger.place_hold("u1", "h2", 5 * USD, expires_at=expires, key="h2")
    clock.advance(minutes=11)
    assert ledger.account("u1").available == 8 * USD  # past expiry it no longer counts
    with pytest.raises(HoldNotFoundError):
        ledger.capture("u1", "h2", USD, key="late")
    names = [e.name for e in ledger.history("u1")]
    assert "HoldExpired" in names


def test_guard_rail_window_refuses_with_violations(settings: Settings, clock: FixedClock) -> None:
    policy = GuardrailPolicy(enabled=True, limits={"5MIN": 2 * USD, "60MIN": 3 * USD})
    limited = dataclasses.replace(
        settings, ledger=dataclasses.replace(settings.ledger, guardrails=policy)
    )
    c = bootstrap(limited, clock=clock)
    try:
        ledger = c.ledger
        ledger.grant("u1", 100 * USD, key="g")
        ledger.charge("u1", 2 * USD, key="c1")
        with pytest.raises(SpendingLimitExceededError) as info:
            ledger.charge("u1", 1, key="c2")
        assert [v["window"] for v in info.value.violations] == ["5MIN"]
        clock.advance(minutes=6)
        ledger.charge("u1", USD, key="c3")  # 5-minute window has slid past the first charge
        with pytest.raises(SpendingLimitExceededError) as info:
            ledger.charge("u1", USD // 2, key="c4")
        assert {v["window"] for v in info.value.violations} == {"60MIN"}
        # a hold counts as spend while it is outstanding
        with pytest.raises(SpendingLimitExceededError):
            ledger.place_hold("u1", "h", USD, expires_at=clock.now + timedelta(hours=1), key="h")
        # per-user override wins over the default; an admin reset forgets spend so far
        ledger.set_limits("u1", {"60min": 10 * USD}, actor="admin")
        ledger.charge("u1", USD // 2, key="c5")
        ledger.reset_windows("u1", ["5MIN"], actor="admin", reason="support ticket 7")
        ledger.charge("u1", 2 * USD, key="c6")
        spend = ledger.account("u1").window_spend
        assert spend["5MIN"] == 2 * USD
        assert spend["60MIN"] == 2 * USD + USD + USD // 2 + 2 * USD
        c.runner.catch_up()
        assert c.queries.window_spend("u1", clock.now) == spend
    finally:
        c.close()


def test_auto_renew_triggers_once_per_threshold_crossing(container: Container) -> None:
    ledger = container.ledger
    ledger.grant("u1", 10 * USD, key="g")
    ledger.configure_auto_renew(
        "u1",
        enabled=True,
        threshold=5 * USD,
        amount=20 * USD,
        payment_method="pm_card_visa",
        actor="u1",
    )
    for i in range(8):
        ledger.charge("u1", USD, key=f"c{i}")
    triggered = [e for e in ledger.history("u1") if e.name == "AutoRenewTriggered"]
    assert len(triggered) == 1
    assert triggered[0].data["amount"] == 20 * USD
    ledger.grant("u1", 20 * USD, key="renewal", source="auto_renew")
    for i in range(20):
        ledger.charge("u1", USD, key=f"d{i}")
    triggered = [e for e in ledger.history("u1") if e.name == "AutoRenewTriggered"]
    assert len(triggered) == 2


def test_unknown_account_reads_are_404(container: Container) -> None:
    with pytest.raises(AccountNotFoundError):
        container.ledger.account("nobody")
    with pytest.raises(AccountNotFoundError):
        container.ledger.history("nobody")


def test_stale_cache_in_another_process_is_never_wrong(
    settings: Settings, clock: FixedClock
) -> None:
    """Two service instances on one database (as two replicas would be)."""
    a = bootstrap(settings, clock=clock)
    b = bootstrap(settings, clock=clock)
    try:
        a.ledger.grant("u1", USD, key="g1")
        b.ledger.charge("u1", USD, key="c1")  # b caches the account at balance 0
        a.ledger.grant("u1", 5 * USD, key="g2")  # b's cache is now stale
        b.ledger.charge("u1", 2 * USD, key="c2")  # refusal on stale state must be re-checked
        a.ledger.charge("u1", USD, key="c3")  # a's cache is stale too: conflict, reload, retry
        b.ledger.charge("u1", USD, key="c4")
        assert a.ledger.account("u1").balance == USD
        with pytest.raises(InsufficientCreditsError):
            b.ledger.charge("u1", 2 * USD, key="c5")
    finally:
        a.close()
        b.close()


def test_balance_at_replays_history(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    ledger.grant("u1", 10 * USD, key="g")
    clock.advance(minutes=1)
    ledger.charge("u1", USD, key="c1")
    middle = clock.advance(minutes=1)
    clock.advance(minutes=1)
    ledger.charge("u1", 2 * USD, key="c2")
    past = ledger.account_at("u1", middle)
    assert (past.balance, past.total_charged) == (9 * USD, USD)
    assert ledger.account("u1").balance == 7 * USD
