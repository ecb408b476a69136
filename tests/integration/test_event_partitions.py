"""The hot/archive partitioned event table (ADR 0027) under the app's own flows (PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from eventsourcing.persistence import IntegrityError

from domain.credits import CreditAccount, account_id_for
from domain.guardrails import GuardrailPolicy
from infrastructure.eventstore.partitions import is_partitioned, partition_event_table
from infrastructure.readmodels.rebuild import rebuild, verify
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap, open_database
from interfaces.cli.admin import main
from projections.ledger import ALL
from tests.conftest import FixedClock
from tests.support.pg import env_of


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock()


@pytest.fixture
def started(pg_settings: Settings, clock: FixedClock) -> Iterator[list[Container]]:
    """Containers started on one database (each closed at the end)."""
    opened: list[Container] = []
    try:
        yield opened
    finally:
        for c in opened:
            c.close()


def _activity(c: Container, user: str, n: int, clock: FixedClock) -> None:
    c.ledger.grant(user, 100_000_000, key=f"{user}-g")
    for i in range(n):
        clock.advance(minutes=3)
        c.ledger.charge(user, 1_000 + i, key=f"{user}-c{i}")


def _stale_write_refused(c: Container, user: str, tag: str) -> None:
    """Two writers load the same version; the second append must be refused."""
    first: CreditAccount = c.app.repository.get(account_id_for(user))
    second: CreditAccount = c.app.repository.get(account_id_for(user))
    now = first.last_at + timedelta(seconds=1)
    first.charge(10, key=f"{tag}-1", now=now, policy=GuardrailPolicy())
    second.charge(10, key=f"{tag}-2", now=now, policy=GuardrailPolicy())
    assert first.pending_events
    assert second.pending_events
    c.app.save(first)
    with pytest.raises(IntegrityError):
        c.app.save(second)


def test_partitioned_table_keeps_the_app_flows(
    pg_settings: Settings,
    clock: FixedClock,
    started: list[Container],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env_of(pg_settings).items():  # the admin CLI reaches the same database
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    started.append(bootstrap(pg_settings, clock=clock))
    c = started[-1]
    _activity(c, "ann", 30, clock)
    middle = clock.now
    _activity(c, "bob", 10, clock)
    before = c.ledger.history("ann")
    then = c.ledger.account_at("ann", middle)

    c.close()  # converted with the service stopped (its pooled statements know the old table)
    started.pop()
    capsys.readouterr()
    assert main(["partition-events", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"converted": True}
    db = open_database(pg_settings)
    try:
        assert is_partitioned(db)
        assert not partition_event_table(db)  # once
    finally:
        db.close()
    started.append(bootstrap(pg_settings, clock=clock))
    c = started[-1]

    _activity(c, "cid", 5, clock)  # new streams and appends go to the hot partition
    c.ledger.charge("ann", 7, key="after")
    _stale_write_refused(c, "ann", "race1")
    assert [e.version for e in c.ledger.history("ann")][: len(before)] == [
        e.version for e in before
    ]
    assert c.ledger.account_at("ann", middle).balance == then.balance
    rebuild(c.db, c.events, ALL)
    assert all(r.ok for r in verify(c.db, c.events, ALL))

    head = c.events.head()
    capsys.readouterr()
    assert main(["archive-events", "1", str(head + 1), "--keep", "5", "--json"]) == 0
    archived = json.loads(capsys.readouterr().out)
    assert archived["moved"] > 0
    with pytest.raises(SystemExit):  # not before partitioning, not an empty range
        main(["archive-events", "5", "5"])
    with c.db.transaction() as tx:
        row = tx.fetchone(
            "SELECT count(*) FROM ledger_events_hot WHERE originator_id = ?",
            (str(account_id_for("ann")),),
        )
    assert row is not None
    assert row[0] == 5  # the stream's newest events stay hot
    # archived events are still read: history, time travel, rebuild
    assert [e.version for e in c.ledger.history("ann")][: len(before)] == [
        e.version for e in before
    ]
    assert c.ledger.account_at("ann", middle).balance == then.balance
    _stale_write_refused(c, "ann", "race2")
    c.ledger.charge("bob", 5, key="after-archive")
    rebuild(c.db, c.events, ALL)
    assert all(r.ok for r in verify(c.db, c.events, ALL))
