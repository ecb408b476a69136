"""CreditAccount keeps a bounded set of idempotency keys; older ones are asked for (ADR 0016).

No database here: ``earlier_keys`` is given a dict, and the key rows the event store would
write are computed from the events (and from their stored JSON, as the backfill reads them).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Snapshot

from domain.credits import (
    IDEMPOTENCY_RETENTION_MINUTES,
    KEY_CACHE_SIZE,
    CreditAccount,
    earlier_keys,
    event_key,
)
from domain.errors import IdempotencyConflictError
from domain.guardrails import GuardrailPolicy, minute_of
from infrastructure.eventstore.idempotency import backfill_rows, decode_key

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OFF = GuardrailPolicy()


class Table:
    """A stand-in for the key table: what the events' rows would be."""

    def __init__(self) -> None:
        self.rows: dict[tuple[UUID, str], str] = {}
        self.asked: list[str] = []

    def record(self, events: list[Any]) -> None:
        for e in events:
            found = event_key(e)
            if found is not None:
                self.rows[e.originator_id, found[0]] = found[1]

    def fingerprint(self, account_id: UUID, key: str) -> str | None:
        self.asked.append(key)
        return self.rows.get((account_id, key))


def busy_account(charges: int, table: Table | None = None) -> tuple[CreditAccount, list[Any]]:
    account = CreditAccount(user_id="u", at=T0)
    account.grant(10**12, key="seed", now=T0)
    for i in range(charges):
        account.charge(1, key=f"k{i}", now=T0 + timedelta(seconds=i), policy=OFF)
    events: list[Any] = list(account.collect_events())
    if table is not None:
        table.record(events)
    return account, events


def replay(events: list[Any]) -> CreditAccount:
    account: Any = None
    for e in events:
        account = e.mutate(account)
    assert isinstance(account, CreditAccount)
    return account


def test_state_keeps_at_most_the_cache_size_after_10000_keyed_charges() -> None:
    account, events = busy_account(10_000)
    assert len(account.keys) == KEY_CACHE_SIZE
    assert list(account.keys) == [f"k{i}" for i in range(10_000 - KEY_CACHE_SIZE, 10_000)]
    assert account.keys_dropped == minute_of(T0 + timedelta(seconds=10_000 - KEY_CACHE_SIZE - 1))
    assert vars(replay(events)) == vars(account)
    state = Snapshot.take(account).state
    assert len(json.dumps(state["keys"])) < 40 * KEY_CACHE_SIZE + 1000


def test_a_key_dropped_from_the_state_is_answered_by_the_table() -> None:
    table = Table()
    account, _ = busy_account(KEY_CACHE_SIZE + 10, table)
    assert "k0" not in account.keys
    now = T0 + timedelta(hours=1)
    version = account.version
    with earlier_keys(table):
        assert account.charge(1, key="k0", now=now, policy=OFF) is False
        with pytest.raises(IdempotencyConflictError):
            account.charge(2, key="k0", now=now, policy=OFF)
        with pytest.raises(IdempotencyConflictError):
            account.grant(1, key="k0", now=now)
        assert account.charge(1, key="new", now=now, policy=OFF) is True
    assert account.version == version + 1
    # Without the table the state alone answers (the table's unique key refuses the save).
    assert account.charge(1, key="k1", now=now, policy=OFF) is True


def test_the_table_is_not_asked_when_the_state_holds_every_recent_key() -> None:
    table = Table()
    account, _ = busy_account(10, table)
    with earlier_keys(table):
        assert account.charge(1, key="k3", now=T0, policy=OFF) is False
        assert account.charge(1, key="fresh", now=T0, policy=OFF) is True
    assert table.asked == []
    # Keys were dropped, but over 72 h ago: nothing recent can be missing from the state.
    busy, _ = busy_account(KEY_CACHE_SIZE + 1, table)
    later = T0 + timedelta(minutes=IDEMPOTENCY_RETENTION_MINUTES + 10)
    with earlier_keys(table):
        assert busy.dropped_keys_since(later) is False
        assert busy.charge(1, key="k0", now=later, policy=OFF) is True
    assert table.asked == []
    # ``always`` (a save was refused) asks about every key the state does not hold.
    with earlier_keys(table, always=True):
        assert busy.charge(1, key="k1", now=later, policy=OFF) is False
    assert table.asked == ["k1"]


def test_event_rows_match_what_the_state_remembers() -> None:
    account = CreditAccount(user_id="u", at=T0)
    expires = T0 + timedelta(hours=1, microseconds=7)
    account.grant(1_000_000, key="g", now=T0, source="payment", reference="pay-1")
    account.charge(10, key="c", now=T0, policy=OFF, reference="r")
    account.place_hold("h1", 100, expires_at=expires, key="h", now=T0, policy=OFF)
    account.capture("h1", 40, key="cap", now=T0)
    account.release("h1", key="rel", now=T0)
    account.debit(5, key="d", now=T0, kind="adjustment", reference="x")
    rows = [r for r in map(event_key, account.collect_events()) if r is not None]
    assert [r[0] for r in rows] == ["g", "c", "h", "cap", "rel", "d"]
    assert {key: [fp, minute] for key, fp, minute in rows} == account.keys


def test_stored_json_gives_the_same_rows_as_the_events() -> None:
    app: Application[UUID] = Application(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    account, events = busy_account(3)
    account.place_hold("h", 5, expires_at=T0 + timedelta(days=1), key="hk", now=T0, policy=OFF)
    events += account.collect_events()
    stored = [app.mapper.to_stored_event(e) for e in events]
    decoded = [decode_key(s.originator_id, s.topic, s.state) for s in stored]
    expected = [(e.originator_id, *found) for e in events if (found := event_key(e))]
    assert [row for _, row in decoded if row is not None] == expected
    assert all(ts == e.timestamp for (ts, _), e in zip(decoded, events, strict=True))
    # Newest first, in pages: every row of the last 72 h + 1 day.
    pages = [[(s.originator_id, s.topic, s.state) for s in reversed(stored)]]
    assert sorted(backfill_rows(pages)) == sorted(expected)


def test_a_v1_snapshot_with_every_key_loads_trimmed_like_a_replay() -> None:
    _, events = busy_account(1_000)
    replayed = replay(events)
    # What the code before the key table kept: every key of the last 72 h.
    old_keys = {f"k{i}": ["charge:1:", minute_of(T0 + timedelta(seconds=i))] for i in range(1_000)}
    old_keys = {"seed": ["grant:1000000000000:admin:", minute_of(T0)], **old_keys}
    state = dict(Snapshot.take(replayed).state)
    state.pop("class_version")
    state.pop("keys_dropped")
    state["keys"] = old_keys
    v1 = Snapshot(
        originator_id=replayed.id,
        originator_version=replayed.version,
        timestamp=T0,
        topic=Snapshot.take(replayed).topic,
        state=state,
    )
    loaded = v1.mutate(None)
    assert isinstance(loaded, CreditAccount)
    assert loaded.keys == replayed.keys
    assert loaded.keys_dropped == replayed.keys_dropped
    assert vars(loaded) == vars(replayed)
