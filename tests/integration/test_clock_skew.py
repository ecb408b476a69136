"""Business time across replicas whose clocks differ (issue 17, item 1), on SQLite and PostgreSQL.

Each "replica" is a container of its own on the test's database with its own clock. A reset
recorded by a clock ahead can no longer be slipped under by charges from a clock behind; a
clock 100 h ahead is held to the reference plus ``CLOCK_MAX_AHEAD_SECONDS`` and ages no
spend, key or hold; the key table's prune is bounded by the database's clock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.clocks import BoundedClock, system_clock
from domain.credits import CreditAccount, account_id_for
from domain.errors import SpendingLimitExceededError
from domain.guardrails import GuardrailPolicy
from domain.ports.clock import Clock
from infrastructure.db.clock import DatabaseClock, business_clock
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap, open_database
from tests.conftest import FixedClock

USD = 1_000_000
USER = "user-skew"
LIMITED = GuardrailPolicy(enabled=True, limits={"60MIN": 10 * USD})


@pytest.fixture
def replica(settings: Settings) -> Iterator[Callable[..., Container]]:
    """Opens containers ("replicas") on the test's database, each with its own clock."""
    made: list[Container] = []

    def make(clock: Clock, reference: Clock | None = None) -> Container:
        limited = dataclasses.replace(
            settings, ledger=dataclasses.replace(settings.ledger, guardrails=LIMITED)
        )
        made.append(bootstrap(limited, clock=clock, reference_clock=reference))
        return made[-1]

    yield make
    for container in reversed(made):
        container.close()


def skewed(clock: FixedClock, seconds: float) -> Clock:
    return lambda: clock.now + timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("reset_skew", "charge_skew"),
    [(40, 0), (120, -120), (0, -600)],
    ids=["reset-40s-ahead", "reset-2min-ahead-charges-2min-behind", "charges-10min-behind"],
)
def test_no_window_accepts_more_than_its_limit_after_a_reset(
    replica: Callable[..., Container], reset_skew: int, charge_skew: int
) -> None:
    true = FixedClock(datetime(2026, 11, 1, 12, 0, 30, tzinfo=UTC))  # mid-minute
    resetter, charger = replica(skewed(true, reset_skew)), replica(skewed(true, charge_skew))
    charger.ledger.grant(USER, 100 * USD, key="funds")
    charger.ledger.charge(USER, 10 * USD, key="to-the-limit")
    true.advance(seconds=5)
    resetter.ledger.reset_windows(USER, ["60MIN"], actor="admin", reason="ticket 17")
    true.advance(seconds=5)
    accepted = 0
    for i in range(4):
        try:
            charger.ledger.charge(USER, 10 * USD, key=f"after-reset-{i}")
            accepted += 1
        except SpendingLimitExceededError:
            pass
        true.advance(seconds=1)
    assert accepted == 1
    report = charger.ledger.spending(USER)
    assert report.spent["60MIN"] == 10 * USD
    assert report.exceeded == ["60MIN"]


def test_a_clock_100h_ahead_is_held_to_the_reference_and_ages_nothing(
    replica: Callable[..., Container], caplog: pytest.LogCaptureFixture
) -> None:
    true = FixedClock()
    honest = replica(true)
    wild = replica(skewed(true, 100 * 3600), reference=true)
    honest.ledger.grant(USER, 100 * USD, key="funds")
    for i in range(3):
        honest.ledger.charge(USER, USD, key=f"k{i}", reference="r")
    expires_at = true.now + timedelta(hours=1)
    honest.ledger.place_hold(USER, "lease", 2 * USD, expires_at=expires_at, key="lease")
    with caplog.at_level(logging.WARNING, logger="domain.clocks"):
        wild.ledger.charge(USER, USD, key="wild", reference="r")
        assert wild.ledger.expire_holds(USER).applied is False  # the lease is not due
    assert "ahead of the reference clock" in caplog.text
    account = honest.ledger.account(USER)
    assert [h.hold_id for h in account.holds] == ["lease"]
    assert account.spending.spent["60MIN"] == 4 * USD
    aggregate: CreditAccount = honest.app.repository.get(account_id_for(USER))
    assert aggregate.last_at <= true.now + timedelta(seconds=5)  # CLOCK_MAX_AHEAD_SECONDS
    assert {"k0", "k1", "k2", "wild"} <= set(aggregate.keys)
    assert honest.ledger.charge(USER, USD, key="k0", reference="r").applied is False
    assert honest.ledger.account(USER).total_charged == 4 * USD


def test_the_key_table_prune_keeps_keys_a_wild_clock_made_look_old(
    replica: Callable[..., Container],
) -> None:
    true = FixedClock(datetime.now(UTC))  # the database's clock is the real one
    honest = replica(true)
    honest.ledger.grant(USER, 100 * USD, key="funds")
    honest.ledger.charge(USER, USD, key="k", reference="r")
    unguarded = replica(skewed(true, 100 * 3600))  # a replica without the bound
    unguarded.ledger.charge(USER, USD, key="wild", reference="r")
    recorder: Any = honest.app.recorder
    newest = int((true.now + timedelta(hours=100)).timestamp()) // 60
    recorder.prune(newest - 72 * 60)  # what the writing process's prune asks for
    pairs = [(account_id_for(USER), key) for key in ("funds", "k", "wild")]
    assert len(recorder.idempotency_fingerprints(pairs)) == 3
    # The key left the state (its time looks 100 h old); the table still refuses a second effect.
    assert honest.ledger.charge(USER, USD, key="k", reference="r").applied is False
    assert honest.ledger.account(USER).total_charged == 2 * USD


def test_the_real_clock_is_bounded_by_the_database_clock_on_postgres(settings: Settings) -> None:
    db = open_database(settings)
    try:
        chosen = business_clock(settings, db, system_clock)
        if settings.db.type == "sqlite":
            assert chosen is system_clock  # one process, one clock: nothing to bound against
            return
        assert isinstance(chosen, BoundedClock)
        server_clock = DatabaseClock(db, refresh=0.0)  # every call after the first refreshes
        for _ in range(3):  # in the background; each reading is the server's time meanwhile
            server = server_clock()
            assert abs(server - datetime.now(UTC)) < timedelta(seconds=5)
        assert chosen() <= server + timedelta(seconds=settings.ledger.clock_max_ahead_seconds + 1)
    finally:
        db.close()
