"""ProxyLeases on SQLite and PostgreSQL: per-request fees paid from leased holds, exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from domain.errors import (
    AccountNotFoundError,
    InsufficientCreditsError,
    InvalidArgumentError,
    SpendingLimitExceededError,
)
from domain.guardrails import GuardrailPolicy
from domain.services.ledger import LedgerService
from domain.services.proxy_leases import ProxyLeases
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock

USD = 1_000_000
PRICE = 1_000
USER = "u1"
REFUSED = (InsufficientCreditsError, SpendingLimitExceededError)


def make(
    ledger: LedgerService,
    clock: FixedClock,
    *,
    process_id: str = "p1",
    price: int = PRICE,
    lease_amount: int = 50_000,
    **options: Any,
) -> ProxyLeases:
    return ProxyLeases(
        ledger,
        price=price,
        lease_amount=lease_amount,
        process_id=process_id,
        clock=clock,
        **options,
    )


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


async def spend_until_refused(leases: ProxyLeases, user: str = USER, limit: int = 10_000) -> int:
    """Spend until a 402; return how many spends succeeded."""
    for done in range(limit):
        try:
            await leases.spend(user)
        except REFUSED:
            return done
    raise AssertionError("never refused")


def events(ledger: LedgerService, name: str, user: str = USER) -> list[dict[str, Any]]:
    return [e.data for e in ledger.history(user) if e.name == name]


def test_lease_amount_must_cover_the_price(container: Container, clock: FixedClock) -> None:
    with pytest.raises(InvalidArgumentError):
        make(container.ledger, clock, lease_amount=PRICE - 1)
    with pytest.raises(InvalidArgumentError):
        make(container.ledger, clock, ttl=timedelta(seconds=1))


def test_price_zero_never_touches_the_ledger(container: Container, clock: FixedClock) -> None:
    leases = make(container.ledger, clock, price=0, lease_amount=0)

    async def body() -> None:
        for _ in range(100):
            assert leases.try_spend(USER)
            await leases.spend(USER)
        await leases.settle()
        await leases.close()

    run(body)
    assert leases.snapshot() == {}
    with pytest.raises(AccountNotFoundError):
        container.ledger.account(USER)


def test_spend_is_settled_exactly(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    ledger.grant(USER, USD, key="g")
    leases = make(ledger, clock)

    async def body() -> None:
        for _ in range(123):
            await leases.spend(USER)
        lease = leases.snapshot()[USER]
        assert (lease.hold_id, lease.amount, lease.spent, lease.settled) == (
            "lease:p1:3",
            50_000,
            23_000,
            0,
        )
        await leases.settle()
        assert leases.snapshot()[USER].settled == 23_000
        view = ledger.account(USER)
        assert (view.total_charged, view.held) == (123_000, 27_000)
        version = view.version
        await leases.settle()  # nothing new to settle: nothing written
        assert ledger.account(USER).version == version
        for _ in range(7):
            assert leases.try_spend(USER)
        await leases.settle()
        await leases.close()

    run(body)
    view = ledger.account(USER)
    assert (view.total_charged, view.held, view.balance) == (130_000, 0, USD - 130_000)
    assert view.holds == ()
    assert [c["amount"] for c in events(ledger, "HoldCaptured")] == [50_000] * 2 + [23_000, 7_000]
    assert [c["key"] for c in events(ledger, "HoldCaptured")][-2:] == [
        "lease:p1:3:capture:from:0",  # named by the position each capture starts from
        "lease:p1:3:capture:from:23000",
    ]
    assert len(events(ledger, "HoldReleased")) == 3
    assert leases.snapshot() == {}


def test_two_processes_never_spend_more_than_granted(
    settings: Settings, container: Container, clock: FixedClock
) -> None:
    granted = 100 * PRICE + PRICE // 2
    container.ledger.grant(USER, granted, key="g")
    other = bootstrap(settings, clock=clock)  # a second service instance on the same database
    try:
        a = make(container.ledger, clock, process_id="a", lease_amount=7_000, settle_every=0.005)
        b = make(other.ledger, clock, process_id="b", lease_amount=7_000, settle_every=0.005)
        counts = {"a": 0, "b": 0}

        async def worker(name: str, leases: ProxyLeases) -> None:
            while True:
                try:
                    await leases.spend(USER)
                except REFUSED:
                    return
                counts[name] += 1
                await asyncio.sleep(0)

        async def body() -> None:
            for name, x in (("a", a), ("b", b)):  # each holds a lease before the race
                await x.spend(USER)
                counts[name] += 1
            settlers = [asyncio.create_task(x.run_forever()) for x in (a, b)]
            await asyncio.gather(
                *(worker(name, x) for name, x in (("a", a), ("b", b)) for _ in range(8))
            )
            view = container.ledger.account(USER)
            spent = counts["a"] + counts["b"]
            assert view.available >= 0
            assert view.total_charged <= spent * PRICE <= granted
            held = sum(
                lease.amount - lease.settled for x in (a, b) for lease in x.snapshot().values()
            )
            assert view.total_charged + held <= granted
            await asyncio.gather(a.close(), b.close())
            await asyncio.gather(*settlers)

        run(body)
        spent = counts["a"] + counts["b"]
        assert counts["a"] > 0
        assert counts["b"] > 0
        view = container.ledger.account(USER)
        assert (view.total_charged, view.held) == (spent * PRICE, 0)
        assert view.balance == granted - spent * PRICE >= 0

        c = make(container.ledger, clock, process_id="c", lease_amount=7_000)

        async def rest() -> None:
            counts["c"] = await spend_until_refused(c)
            await c.close()

        run(rest)
        assert spent + counts["c"] == granted // PRICE  # nothing lost, nothing over
        assert container.ledger.account(USER).balance == PRICE // 2
    finally:
        other.close()


def test_refused_when_funds_run_out_and_refusal_is_cached(
    container: Container, clock: FixedClock
) -> None:
    ledger = container.ledger
    ledger.grant(USER, 12_500, key="g")
    leases = make(ledger, clock, lease_amount=5_000)

    async def body() -> None:
        assert await spend_until_refused(leases) == 12  # 5,000 + 5,000 + 2,000 (shrunk)
        view = ledger.account(USER)
        assert (view.total_charged, view.held, view.balance) == (12_000, 0, 500)
        with pytest.raises(InsufficientCreditsError) as info:
            await leases.spend(USER)
        assert info.value.status == 402
        version = ledger.account(USER).version
        ledger.grant(USER, 10_000, key="g2")
        with pytest.raises(InsufficientCreditsError):
            await leases.spend(USER)  # answered from the refusal cache, not the ledger
        assert ledger.account(USER).version == version + 1  # only the grant
        clock.advance(seconds=2)
        await leases.spend(USER)
        await leases.close()

    run(body)
    view = ledger.account(USER)
    assert (view.total_charged, view.held, view.balance) == (13_000, 0, 9_500)
    assert [h["amount"] for h in events(ledger, "HoldPlaced")] == [5_000, 5_000, 2_000, 5_000]


def test_guard_rail_refusal_is_spending_limit_exceeded(
    settings: Settings, clock: FixedClock
) -> None:
    policy = GuardrailPolicy(enabled=True, limits={"5MIN": 10_000})
    c = bootstrap(
        dataclasses.replace(
            settings, ledger=dataclasses.replace(settings.ledger, guardrails=policy)
        ),
        clock=clock,
    )
    try:
        ledger = c.ledger
        ledger.grant(USER, USD, key="g")
        leases = make(ledger, clock)

        async def body() -> None:
            assert await spend_until_refused(leases) == 10  # lease shrunk to the window's room
            clock.advance(seconds=2)  # past the refusal cache: asks the ledger again
            with pytest.raises(SpendingLimitExceededError) as info:
                await leases.spend(USER)
            assert info.value.status == 402
            assert [v["window"] for v in info.value.violations] == ["5MIN"]
            clock.advance(minutes=6)  # the window has slid past the first spend
            await leases.spend(USER)
            await leases.close()

        run(body)
        view = ledger.account(USER)
        assert (view.total_charged, view.held) == (11_000, 0)
    finally:
        c.close()


def test_expired_lease_is_dropped_and_never_overcharged(
    container: Container, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="domain.services.proxy_leases")
    ledger = container.ledger
    ledger.grant(USER, USD, key="g")
    leases = make(ledger, clock)  # ttl 10 minutes, no spend in its last minute

    async def body() -> None:
        for _ in range(10):
            await leases.spend(USER)
        clock.advance(minutes=11)
        assert not leases.try_spend(USER)
        await leases.settle()  # the capture meets an expired hold: dropped, spend lost
        assert leases.snapshot() == {}
        for _ in range(3):
            await leases.spend(USER)  # a new lease
        clock.advance(minutes=11)
        await leases.spend(USER)  # renewal: the old hold expired too; a third lease
        assert leases.snapshot()[USER].hold_id == "lease:p1:3"
        clock.advance(minutes=9, seconds=30)  # within the margin, not yet expired
        assert not leases.try_spend(USER)
        await leases.spend(USER)  # renewal captures the 1 spend of the third lease
        await leases.close()

    run(body)
    view = ledger.account(USER)
    assert (view.total_charged, view.held) == (2 * PRICE, 0)  # 13 spends lost, never more
    assert len(events(ledger, "HoldExpired")) == 2
    lost = [r.getMessage() for r in caplog.records if "not charged" in r.getMessage()]
    assert len(lost) == 2
    assert "10000 micro-USD" in lost[0]
    assert "3000 micro-USD" in lost[1]


def test_idle_lease_is_settled_and_released(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    ledger.grant(USER, USD, key="g")
    leases = make(ledger, clock, settle_every=5.0)

    async def body() -> None:
        for _ in range(3):
            await leases.spend(USER)
        clock.advance(seconds=9)
        await leases.settle()
        assert USER in leases.snapshot()  # not idle yet: captured, still leased
        clock.advance(seconds=1)
        await leases.settle()
        assert leases.snapshot() == {}

    run(body)
    view = ledger.account(USER)
    assert (view.total_charged, view.held) == (3 * PRICE, 0)


def test_concurrent_spends_share_one_renewal(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    ledger.grant(USER, USD, key="g")
    leases = make(ledger, clock)

    async def body() -> None:
        await asyncio.gather(*(leases.spend(USER) for _ in range(20)))
        assert len(events(ledger, "HoldPlaced")) == 1
        await asyncio.gather(*(leases.spend(USER) for _ in range(60)))
        assert len(events(ledger, "HoldPlaced")) == 2
        assert leases.snapshot()[USER].spent == 30 * PRICE
        await leases.close()

    run(body)
    assert ledger.account(USER).total_charged == 80 * PRICE


def test_settle_retried_after_unknown_outcome_is_applied_once(
    container: Container, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = container.ledger
    ledger.grant(USER, USD, key="g")
    leases = make(ledger, clock)
    real_capture = ledger.capture
    failures = [OSError("connection lost after commit")]

    def flaky_capture(*args: Any, **kwargs: Any) -> Any:
        outcome = real_capture(*args, **kwargs)
        if failures:
            raise failures.pop()
        return outcome

    monkeypatch.setattr(ledger, "capture", flaky_capture)

    async def body() -> None:
        for _ in range(5):
            await leases.spend(USER)
        await leases.settle()  # applied, but the answer was lost
        assert leases.snapshot()[USER].settled == 0
        for _ in range(2):
            await leases.spend(USER)
        await leases.settle()  # resends the first capture (a replay), then the new spend
        assert leases.snapshot()[USER].settled == 7 * PRICE
        await leases.close()

    run(body)
    assert ledger.account(USER).total_charged == 7 * PRICE
    assert [c["amount"] for c in events(ledger, "HoldCaptured")] == [5 * PRICE, 2 * PRICE]


def test_flood_from_a_broke_user_asks_the_ledger_once(
    container: Container, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = container.ledger
    ledger.grant(USER, PRICE // 2, key="g")
    leases = make(ledger, clock)
    real_place = ledger.place_hold
    calls: list[int] = []

    def counting_place(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        return real_place(*args, **kwargs)

    monkeypatch.setattr(ledger, "place_hold", counting_place)

    async def body() -> None:
        results = await asyncio.gather(
            *(leases.spend(USER) for _ in range(50)), return_exceptions=True
        )
        assert all(isinstance(r, InsufficientCreditsError) for r in results)
        for _ in range(50):  # later requests: answered from the refusal cache
            with pytest.raises(InsufficientCreditsError):
                await leases.spend(USER)
        await leases.close()

    run(body)
    assert calls == [50_000]  # one renewal; the refusal left no room for a smaller lease


def test_refund_gives_back_only_unsettled_spend(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    ledger.grant(USER, USD, key="g")
    leases = make(ledger, clock)

    async def body() -> None:
        assert not leases.refund(USER)  # no lease yet
        for _ in range(3):
            await leases.spend(USER)
        assert leases.refund(USER)
        await leases.settle()  # 2 spends captured
        assert not leases.refund(USER)  # what a capture carried stays charged
        await leases.spend(USER)
        assert leases.refund(USER)
        await leases.close()

    run(body)
    assert ledger.account(USER).total_charged == 2 * PRICE
    free = make(ledger, clock, process_id="p2", price=0)
    assert not free.refund(USER)
