"""The ledger's money rules on the in-memory event store: fast, no database.

The same rules run on SQLite and PostgreSQL in tests/integration/test_ledger_service.py; these
run in milliseconds, so the rules can be checked here first.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from domain.errors import (
    HoldConflictError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    SpendingLimitExceededError,
)
from domain.guardrails import GuardrailPolicy
from domain.services.ledger import LedgerApp, LedgerService
from tests.conftest import FixedClock
from tests.fakes.memory_ledger import MemoryLedgerRecorder, memory_ledger

USD = 1_000_000


def test_the_ledger_refuses_a_store_without_the_key_table() -> None:
    with pytest.raises(TypeError, match="idempotency keys"):
        LedgerApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def test_grant_and_charge_are_idempotent(ledger: LedgerService) -> None:
    assert ledger.grant("u1", 10 * USD, key="g").applied
    assert not ledger.grant("u1", 10 * USD, key="g").applied
    with pytest.raises(IdempotencyConflictError):
        ledger.grant("u1", 11 * USD, key="g")
    assert ledger.charge("u1", USD, key="c").applied
    assert not ledger.charge("u1", USD, key="c").applied
    view = ledger.account("u1")
    assert (view.balance, view.total_granted, view.total_charged) == (9 * USD, 10 * USD, USD)
    assert view.version == 3


def test_every_key_is_in_the_key_table_once(ledger: LedgerService) -> None:
    ledger.grant("u1", 10 * USD, key="g")
    ledger.charge("u1", USD, key="c")
    ledger.charge("u1", USD, key="c")
    recorder = ledger.app.recorder
    assert isinstance(recorder, MemoryLedgerRecorder)
    assert recorder.key_rows() == 2


def test_a_save_naming_a_recorded_key_stores_nothing() -> None:
    recorder = MemoryLedgerRecorder()
    account = uuid4()

    def event(version: int) -> StoredEvent:
        return StoredEvent(account, version, "t", b"{}")

    recorder.insert_events([event(1)], idempotency_keys=[(account, "k", "f", 1)])
    with pytest.raises(IntegrityError):
        recorder.insert_events([event(2)], idempotency_keys=[(account, "k", "f", 2)])
    with pytest.raises(IntegrityError):
        recorder.insert_events(
            [event(2)], idempotency_keys=[(account, "a", "f", 2), (account, "a", "g", 2)]
        )
    assert [e.originator_version for e in recorder.select_events(account)] == [1]
    assert recorder.idempotency_fingerprints([(account, "k"), (account, "a")]) == {
        (account, "k"): "f"
    }


def test_insufficient_credits_changes_nothing(ledger: LedgerService) -> None:
    ledger.grant("u1", USD, key="g")
    before = ledger.account("u1")
    with pytest.raises(InsufficientCreditsError) as info:
        ledger.charge("u1", 2 * USD, key="c")
    assert info.value.status == 402
    after = ledger.account("u1")
    assert (after.version, after.balance) == (before.version, before.balance)


def test_overage_cap_allows_going_negative_down_to_the_cap(ledger: LedgerService) -> None:
    ledger.grant("u1", USD, key="g")
    ledger.set_cap("u1", USD // 2, actor="admin")
    ledger.charge("u1", USD + USD // 2, key="c1")
    view = ledger.account("u1")
    assert (view.balance, view.overage) == (-(USD // 2), USD // 2)
    with pytest.raises(InsufficientCreditsError):
        ledger.charge("u1", 1, key="c2")


def test_holds_capture_release_and_expire(ledger: LedgerService, clock: FixedClock) -> None:
    ledger.grant("u1", 10 * USD, key="g")
    expires = clock.now + timedelta(minutes=10)
    ledger.place_hold("u1", "h1", 4 * USD, expires_at=expires, key="h1")
    assert ledger.account("u1").available == 6 * USD
    ledger.capture("u1", "h1", USD, key="cap1")
    with pytest.raises(HoldConflictError):
        ledger.capture("u1", "h1", 4 * USD, key="cap2")
    ledger.release("u1", "h1", key="rel")
    with pytest.raises(HoldNotFoundError):
        ledger.capture("u1", "h1", 1, key="cap3")
    view = ledger.account("u1")
    assert (view.balance, view.held, view.available) == (9 * USD, 0, 9 * USD)
    ledger.place_hold("u1", "h2", 5 * USD, expires_at=expires, key="h2")
    clock.advance(minutes=11)
    assert ledger.account("u1").available == 9 * USD
    with pytest.raises(HoldNotFoundError):
        ledger.capture("u1", "h2", USD, key="late")


def test_guard_rail_window_slides(clock: FixedClock) -> None:
    policy = GuardrailPolicy(enabled=True, limits={"5MIN": 2 * USD})
    ledger = memory_ledger(policy=policy, clock=clock)
    try:
        ledger.grant("u1", 100 * USD, key="g")
        ledger.charge("u1", 2 * USD, key="c1")
        with pytest.raises(SpendingLimitExceededError) as info:
            ledger.charge("u1", 1, key="c2")
        assert [v["window"] for v in info.value.violations] == ["5MIN"]
        clock.advance(minutes=6)
        ledger.charge("u1", 2 * USD, key="c3")
        assert ledger.account("u1").balance == 96 * USD
    finally:
        ledger.close()


def test_concurrent_charges_never_overspend(ledger: LedgerService) -> None:
    """Eight threads race 40 charges of 1 USD (half of them repeats) for 25 USD of credit."""
    ledger.grant("u1", 25 * USD, key="g")
    applied: list[str] = []
    lock = threading.Lock()

    def spend(worker: int) -> None:
        for i in range(5):
            key = f"c{(worker * 5 + i) % 20}"  # every key is sent by two workers
            try:
                if ledger.charge("u1", USD, key=key).applied:
                    with lock:
                        applied.append(key)
            except InsufficientCreditsError:
                pass

    threads = [threading.Thread(target=spend, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(applied) == len(set(applied)) == 20  # each key once; 20 USD fit in 25
    assert ledger.account("u1").balance == 5 * USD
