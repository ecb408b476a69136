"""Hold expiry: checks agree with charges, and the sweep expires idle accounts' holds.

SQLite and PostgreSQL (the ``settings`` fixture).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from domain.errors import DomainError
from domain.guardrails import GuardrailPolicy
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock

USD = 1_000_000


@pytest.fixture
def limited(settings: Settings, clock: FixedClock) -> Iterator[Container]:
    """A container whose guard rails are on (a 60-minute window of 30.00)."""
    policy = GuardrailPolicy(enabled=True, limits={"60MIN": 30 * USD})
    c = bootstrap(
        dataclasses.replace(
            settings, ledger=dataclasses.replace(settings.ledger, guardrails=policy)
        ),
        clock=clock,
    )
    try:
        yield c
    finally:
        c.close()


def _outcome(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except DomainError as exc:
        return type(exc).__name__
    return "ok"


def test_the_check_answers_what_the_charge_then_does(limited: Container, clock: FixedClock) -> None:
    """Every case: funds, a hold (live or past expiry), spend so far, amount asked."""
    ledger = limited.ledger
    grid = itertools.product(
        (20 * USD, 40 * USD),  # granted
        (0, 9 * USD, 15 * USD),  # held (0: no hold)
        (0, 12 * USD),  # already charged in the window
        (1, 6),  # minutes later (the hold lasts 5)
        (5 * USD, 11 * USD, 19 * USD, 25 * USD),  # amount checked, then charged
    )
    disagreements = []
    for n, (granted, held, spent, minutes, amount) in enumerate(grid):
        user = f"case-{n}"
        ledger.grant(user, granted, key="g")
        if spent:
            ledger.charge(user, spent, key="spent")
        if held:
            expires = clock.now + timedelta(minutes=5)
            placed = _outcome(
                lambda u=user, h=held, e=expires: ledger.place_hold(
                    u, "h", h, expires_at=e, key="h"
                )
            )
            assert placed in {"ok", "InsufficientCreditsError", "SpendingLimitExceededError"}
        clock.advance(minutes=minutes)
        check = _outcome(lambda u=user, a=amount: ledger.check_spend(u, a))
        charge = _outcome(lambda u=user, a=amount: ledger.charge(u, a, key="c"))
        if check != charge:
            disagreements.append((granted, held, spent, minutes, amount, check, charge))
        clock.advance(hours=2)  # the next case starts with empty windows
    assert disagreements == []


def _held(c: Container, user: str) -> int:
    c.runner.catch_up()
    row = c.queries.balance(user)
    assert row is not None
    return int(row["held"])


def test_an_idle_accounts_expired_hold_leaves_the_balances_in_one_sweep(
    container: Container, clock: FixedClock
) -> None:
    ledger = container.ledger
    ledger.grant("idle", 20 * USD, key="g")
    ledger.place_hold("idle", "h", 9 * USD, expires_at=clock.now + timedelta(minutes=5), key="h")
    sweep = container.hold_sweep()
    try:
        assert _held(container, "idle") == 9 * USD
        assert sweep.sweep_once() == 0  # not due yet
        clock.advance(minutes=6)
        assert _held(container, "idle") == 9 * USD  # nothing else happens to the account
        assert sweep.sweep_once() == 1
        assert _held(container, "idle") == 0
        row = container.queries.balance("idle")
        assert row is not None
        assert row["balance"] == 20 * USD
        assert [e.name for e in ledger.history("idle")][-1] == "HoldExpired"
        assert sweep.sweep_once() == 0  # expired once
    finally:
        sweep.election.close()


def test_the_running_sweep_expires_within_its_interval(
    container: Container, clock: FixedClock
) -> None:
    ledger = container.ledger
    for n in range(3):
        ledger.grant(f"idle-{n}", 20 * USD, key="g")
        ledger.place_hold(
            f"idle-{n}", "h", USD, expires_at=clock.now + timedelta(minutes=1), key="h"
        )
    ledger.place_hold("idle-0", "later", USD, expires_at=clock.now + timedelta(hours=1), key="l")
    container.runner.start()
    sweep = container.hold_sweep()
    sweep.interval, sweep.page = 0.05, 2  # two pages per sweep
    clock.advance(minutes=2)

    async def watch() -> list[int]:
        task = asyncio.create_task(sweep.run_forever())
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                held = [await asyncio.to_thread(_held, container, f"idle-{n}") for n in range(3)]
                if held == [USD, 0, 0]:
                    break
                await asyncio.sleep(0.05)
            return held
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert asyncio.run(watch()) == [USD, 0, 0]


@pytest.mark.postgres
def test_one_replica_sweeps_and_another_takes_over(
    pg_settings: Settings, clock: FixedClock
) -> None:
    first, second = bootstrap(pg_settings, clock=clock), bootstrap(pg_settings, clock=clock)
    sweeps = [first.hold_sweep(), second.hold_sweep()]
    try:
        for n in range(2):
            first.ledger.grant(f"u{n}", 20 * USD, key="g")
            expires = clock.now + timedelta(minutes=n + 1)
            first.ledger.place_hold(f"u{n}", "h", USD, expires_at=expires, key="h")
        first.runner.catch_up()
        clock.advance(seconds=90)
        assert sweeps[0].election.leading()
        assert sweeps[1].sweep_once() == 0  # not elected: sweeps nothing, though u0 is due
        assert _held(second, "u0") == USD
        assert sweeps[0].sweep_once() == 1
        sweeps[0].election.close()  # the leader goes away (or dies: its session ends)
        clock.advance(seconds=60)
        assert sweeps[1].sweep_once() == 1
        assert [_held(second, f"u{n}") for n in range(2)] == [0, 0]
    finally:
        for sweep in sweeps:
            sweep.election.close()
        first.close()
        second.close()
