"""Snapshot rows written before ADR 0036 still load: v3 states with ``buckets``, either plain
``[minute, micros]`` pairs under the library's ``Snapshot`` (before ADR 0033) or packed under
``CreditAccount.Snapshot`` (ADR 0033).

The account's history has grants, charges, holds placed, partly captured, released and
expired, and a refund debit. Its snapshot rows are replaced by rows taken the way the code
before ``aa2a9c4`` (plain) or before ADR 0036 (packed) took them, stored through the real
PostgreSQL recorder; a fresh process then loads the account now and at instants across the
history, and must give exactly the view folded from every event.
"""

from __future__ import annotations

import copy
import json
import random
from datetime import timedelta
from typing import Any

import pytest
from eventsourcing.domain import Snapshot

from domain.bucket_codec import pack
from domain.credits import CreditAccount, account_id_for
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


def _v3(snapshot: Any, cls: type[Any], *, packed: bool) -> Any:
    """``snapshot`` (the library's, of today's account) as the code before ADR 0036 took it."""
    state = dict(snapshot.state)
    minutes, amounts = state.pop("spend_minutes"), state.pop("spend_amounts")
    buckets = [[m, a] for m, a in zip(minutes, amounts, strict=True)]
    state["buckets"] = pack(minutes, amounts) if packed else buckets
    state["class_version"] = 3
    return cls(
        originator_id=snapshot.originator_id,
        originator_version=snapshot.originator_version,
        timestamp=snapshot.timestamp,
        topic=snapshot.topic,
        state=state,
    )


@pytest.fixture(params=["plain", "packed"])
def old_rows(
    pg_settings: Settings, request: pytest.FixtureRequest
) -> tuple[Settings, FixedClock, list[Any]]:
    packed = request.param == "packed"
    cls = CreditAccount.Snapshot if packed else Snapshot
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
            old.append(_v3(Snapshot.take(folded), cls, packed=packed))
        assert container.app.snapshots is not None
        container.app.snapshots.put(old)
        with container.db.read() as tx:
            rows = tx.fetchall("SELECT topic, state FROM ledger_snapshots")
        assert len(rows) == len(old)
        for topic, state in rows:
            raw = bytes(state).decode()
            assert '"buckets"' in raw
            assert '"spend_minutes"' not in raw
            assert '"class_version": 3' in raw or '"class_version":3' in raw
            if packed:  # ADR 0033's form
                assert topic == "domain.credits:CreditAccount.Snapshot"
                assert '"z1:' in raw
            else:  # plain lists, as stored before aa2a9c4
                assert topic == "eventsourcing.domain:Snapshot"
                assert "z1:" not in raw
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
