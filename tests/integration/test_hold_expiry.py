"""Hold expiry: checks agree with charges, and the sweep expires idle accounts' holds.

SQLite and PostgreSQL (the ``settings`` fixture).
"""

from __future__ import annotations

import itertools
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
    c = bootstrap(Settings(**{**settings.__dict__, "guardrails": policy}), clock=clock)
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
