"""Projection runners, blue/green rebuilds and verification, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import timedelta

from infrastructure.readmodels.rebuild import rebuild, verify
from infrastructure.readmodels.runner import ProjectionRunner
from infrastructure.readmodels.store import all_states
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from projections.base import Op, Recorded
from projections.ledger import ALL
from tests.conftest import FixedClock

USD = 1_000_000


def _write_history(c: Container, clock: FixedClock, users: int = 5, rounds: int = 20) -> None:
    for u in range(users):
        c.ledger.grant(f"user{u}", 100 * USD, key=f"g{u}", reason="seed")
    for r in range(rounds):
        clock.advance(seconds=37)
        for u in range(users):
            c.ledger.charge(f"user{u}", 1000 + r, key=f"c{u}-{r}", reference=f"req-{r}")
        if r % 5 == 0:
            c.ledger.place_hold(
                "user0", f"h{r}", USD, expires_at=clock.now + timedelta(minutes=3), key=f"h{r}"
            )
            c.ledger.capture("user0", f"h{r}", USD // 4, key=f"cap{r}")
        if r == 10:
            c.ledger.debit("user1", USD, key="refund", kind="refund")
            c.ledger.reset_windows("user2", None, actor="admin", reason="test")
            c.ledger.set_cap("user3", 5 * USD, actor="admin")


def _all_verified(c: Container) -> None:
    for projection in ALL:
        result = verify(c.db, c.events, [projection])[0]
        assert result.ok, result
        assert result.position == c.events.head()


def test_catch_up_is_exact_and_rebuild_equals_live(container: Container, clock: FixedClock) -> None:
    _write_history(container, clock)
    container.runner.catch_up()
    assert container.runner.lag() == dict.fromkeys((p.name for p in ALL), 0)
    for u in range(5):
        row = container.queries.balance(f"user{u}")
        account = container.ledger.account(f"user{u}")
        assert row is not None
        assert row["balance"] == account.balance
        assert row["total_charged"] == account.total_charged
    assert (
        container.queries.window_spend("user0", clock.now)
        == container.ledger.account("user0").window_spend
    )
    _all_verified(container)
    before = container.queries.balance("user0")
    for projection in ALL:
        (report,) = rebuild(container.db, container.events, [projection])
        assert report.new_generation == 2
    assert {s.generation for s in all_states(container.db)} == {2}
    assert container.queries.balance("user0") == before
    _all_verified(container)


def test_two_runners_apply_each_event_once(settings: Settings, clock: FixedClock) -> None:
    writer = bootstrap(settings, clock=clock)
    other = bootstrap(settings, clock=clock)
    try:
        _write_history(writer, clock, rounds=10)
        threads = [threading.Thread(target=c.runner.catch_up) for c in (writer, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        _all_verified(writer)
        usage = writer.queries.usage("user0")
        assert sum(d.spend_count for d in usage) == 10 + 2  # 10 charges + 2 captures
    finally:
        writer.close()
        other.close()


def test_watchdog_catches_up_without_notifications(settings: Settings, clock: FixedClock) -> None:
    """A runner in another 'process' is never woken by this one's saves: it must poll."""
    fast = dataclasses.replace(
        settings, ledger=dataclasses.replace(settings.ledger, projection_poll_interval=0.05)
    )
    reader = bootstrap(fast, clock=clock, run_projections=True)
    writer = bootstrap(settings, clock=clock)
    try:
        writer.ledger.grant("u1", 5 * USD, key="g")
        writer.ledger.charge("u1", USD, key="c")
        deadline = time.monotonic() + 10
        row = reader.queries.balance("u1")
        while time.monotonic() < deadline and (row is None or row["balance"] != 4 * USD):
            time.sleep(0.05)
            row = reader.queries.balance("u1")
        assert row is not None
        assert row["balance"] == 4 * USD
    finally:
        writer.close()
        reader.close()


def test_rebuild_while_writes_and_live_runner_continue(
    settings: Settings, clock: FixedClock
) -> None:
    fast = dataclasses.replace(
        settings, ledger=dataclasses.replace(settings.ledger, projection_poll_interval=0.02)
    )
    c = bootstrap(fast, clock=clock, run_projections=True)
    try:
        _write_history(c, clock, rounds=10)
        stop = threading.Event()

        def keep_writing() -> None:
            i = 0
            while not stop.is_set() and i < 400:
                c.ledger.charge("user4", 10, key=f"live-{i}")
                i += 1

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            for projection in ALL:
                rebuild(c.db, c.events, [projection])
        finally:
            stop.set()
            writer.join()
        assert c.runner.wait_for(c.events.head(), timeout=20)
        _all_verified(c)
        row = c.queries.balance("user4")
        assert row is not None
        assert row["balance"] == c.ledger.account("user4").balance
    finally:
        c.close()


def test_verify_detects_a_tampered_read_model(container: Container, clock: FixedClock) -> None:
    _write_history(container, clock, users=2, rounds=3)
    container.runner.catch_up()
    with container.db.transaction() as tx:
        tx.execute("UPDATE balances_g1 SET balance = balance + 1 WHERE user_id != ''")
    result = verify(container.db, container.events, [ALL[0]])[0]
    assert not result.ok


class _CountingGrants:
    """A projection that folds only grants, counting every event it is handed."""

    name = "counting_grants"
    tables = ("balances",)
    events = ("CreditAccount.Granted",)

    def __init__(self) -> None:
        self.handed: list[str] = []

    def fold(self, event: Recorded) -> list[Op]:
        self.handed.append(event.name)
        return []


def test_the_runner_hands_a_projection_only_the_events_it_folds(
    container: Container, clock: FixedClock
) -> None:
    _write_history(container, clock, users=2, rounds=3)
    counting = _CountingGrants()
    with container.db.transaction() as tx:
        tx.execute(
            "INSERT INTO projection_state (name, generation, position) VALUES (?, 1, 0)",
            (counting.name,),
        )
    runner = ProjectionRunner(container.db, container.events, [counting])
    runner.catch_up()
    assert counting.handed == ["CreditAccount.Granted"] * 2
    assert runner.positions()[counting.name] == container.events.head()  # read past the rest
