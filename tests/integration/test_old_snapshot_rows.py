"""Snapshot rows written before ADR 0033 (library ``Snapshot``, plain bucket lists) still load.

The account's history has grants, charges, holds placed, partly captured, released and
expired, and a refund debit. Its new-format snapshot rows are replaced by rows taken the way
the code before ``aa2a9c4`` took them (``eventsourcing.domain:Snapshot``), stored through the
real PostgreSQL recorder; a fresh process then loads the account now and at instants across
the history, and must give exactly the view folded from every event.
"""

from __future__ import annotations

import copy
import json
import random
from datetime import timedelta
from typing import Any

import pytest
from eventsourcing.domain import Snapshot

from domain.credits import account_id_for
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock

USER = "old-snapshots"


def _history(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    ledger.grant(USER, 500_000_000, key="seed")
    for i in range(70):
        clock.advance(seconds=37)
        ledger.charge(USER, 1_000 + i, key=f"c{i}")
        hold = f"h{i}"
        ledger.place_hold(
            USER, hold, 20_000, expires_at=clock() + timedelta(minutes=5), key=f"{hold}:p"
        )
        if i % 3 == 0:  # left to expire
            continue
        clock.advance(seconds=11)
        ledger.capture(USER, hold, 7_000 + i, key=f"{hold}:c")
        if i % 3 == 1:
            ledger.release(USER, hold, key=f"{hold}:r")
        if i % 10 == 5:
            ledger.debit(USER, 2_500, key=f"d{i}", kind="refund")
        if i % 9 == 0:
            clock.advance(minutes=7)
            ledger.expire_holds(USER)
    clock.advance(minutes=6)


@pytest.fixture
def old_rows(pg_settings: Settings) -> tuple[Settings, FixedClock, list[Any]]:
    clock = FixedClock()
    container = bootstrap(pg_settings, clock=clock)
    try:
        _history(container, clock)
        account_id = account_id_for(USER)
        events: list[Any] = list(container.app.events.get(account_id))
        assert len(events) > 200
        with container.db.transaction() as tx:
            tx.execute("DELETE FROM ledger_snapshots")
        old = []
        for version in range(100, len(events) + 1, 100):
            folded: Any = None
            for event in events[:version]:
                folded = event.mutate(folded)
            old.append(Snapshot.take(folded))  # what the code before aa2a9c4 stored
        assert container.app.snapshots is not None
        container.app.snapshots.put(old)
        with container.db.read() as tx:
            rows = tx.fetchall("SELECT topic, state FROM ledger_snapshots")
        assert len(rows) == len(old)
        for topic, state in rows:
            assert topic == "eventsourcing.domain:Snapshot"
            raw = bytes(state).decode()
            assert '"buckets"' in raw
            assert "z1:" not in raw  # plain lists, as stored before
            assert isinstance(json.loads(raw), dict)
    finally:
        container.close()
    return pg_settings, clock, events


def test_old_snapshot_rows_give_the_same_account_now_and_at_past_instants(
    old_rows: tuple[Settings, FixedClock, list[Any]],
) -> None:
    settings, clock, events = old_rows
    container = bootstrap(settings, clock=clock)  # a fresh process: nothing cached
    try:
        ledger = container.ledger
        full: Any = None
        for event in events:
            full = event.mutate(full)
        assert ledger.account(USER) == ledger._view(copy.deepcopy(full), clock())
        loaded: Any = container.app.repository.get(account_id_for(USER))
        assert vars(loaded) == vars(full)

        rng = random.Random(7)
        first, last = events[0].at, events[-1].at
        instants = [first + (last - first) * rng.random() for _ in range(15)]
        instants += [e.at for e in rng.sample(events, 10)]
        instants += [e.expires_at for e in events if type(e).__name__ == "HoldPlaced"][::9]
        folded: Any = None
        index = 0
        live = 0
        for instant in sorted(instants):
            while index < len(events) and events[index].at <= instant:
                folded = events[index].mutate(folded)
                index += 1
            view = ledger.account_at(USER, instant)
            assert view == ledger._view(copy.deepcopy(folded), instant), instant
            live += bool(view.holds)
        assert live > 0
    finally:
        container.close()
