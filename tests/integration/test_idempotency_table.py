"""Idempotency keys older than the account state keeps: the key table (docs/adr/0016).

Each test runs on SQLite and on PostgreSQL. An account that used more than
``KEY_CACHE_SIZE`` keys keeps only the newest in its state; a replay of an older key, up to
72 h later, after a restart, through the group committer or ``LedgerService.transact``,
concurrently from two containers, is still one effect (or a conflict with other parameters).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import IntegrityError

from domain.credits import KEY_CACHE_SIZE, CreditAccount, account_id_for
from domain.errors import IdempotencyConflictError, InsufficientCreditsError
from domain.guardrails import GuardrailPolicy
from infrastructure.eventstore import idempotency
from infrastructure.eventstore.factory import eventstore_env
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.conftest import FixedClock

OFF = GuardrailPolicy()
USER = "busy"
FUNDS = 10**12


@pytest.fixture
def open_container(settings: Settings, clock: FixedClock) -> Iterator[Callable[[], Container]]:
    """Builds containers on the test's database (a "restart" is a second one); closes all."""
    made: list[Container] = []

    def make() -> Container:
        made.append(bootstrap(settings, clock=clock))
        return made[-1]

    yield make
    for container in reversed(made):
        container.close()


def fill(container: Container, count: int, prefix: str = "k") -> None:
    """Fund ``USER`` and charge it ``count`` times with fresh keys (one save per 50)."""
    container.ledger.grant(USER, FUNDS, key="funds")
    app, account_id = container.app, account_id_for(USER)
    now = container.ledger.clock()
    for start in range(0, count, 50):
        account: CreditAccount = app.repository.get(account_id)
        for i in range(start, min(count, start + 50)):
            account.charge(1, key=f"{prefix}{i}", now=now, policy=OFF, reference="r")
        app.save(account)
    container.ledger.committer.evict(account_id)


def charges(container: Container) -> list[str]:
    return [e.data["key"] for e in container.ledger.history(USER) if e.name == "Charged"]


def table_rows(container: Container) -> int:
    recorder: Any = container.app.recorder
    return len(recorder.idempotency_fingerprints([(account_id_for(USER), "k0")]))


@pytest.mark.parametrize("hours", [1, 71])
def test_a_key_older_than_the_state_is_one_effect_hours_later(
    open_container: Callable[[], Container], clock: FixedClock, hours: int
) -> None:
    c = open_container()
    fill(c, KEY_CACHE_SIZE + 20)
    state: CreditAccount = c.app.repository.get(account_id_for(USER))
    assert "k0" not in state.keys
    assert len(state.keys) == KEY_CACHE_SIZE
    balance = c.ledger.account(USER).balance
    clock.advance(hours=hours)
    ledger = c.ledger
    assert ledger.charge(USER, 1, key="k0", reference="r").applied is False
    with pytest.raises(IdempotencyConflictError):
        ledger.charge(USER, 2, key="k0", reference="r")
    with pytest.raises(IdempotencyConflictError):
        ledger.grant(USER, 1, key="k1")
    # the same through transact (marketplace and payments use it): looked up one by one
    assert (
        ledger.transact(
            USER, lambda a, now: (a.charge(1, key="k2", now=now, policy=OFF, reference="r"), a)
        )
        is False
    )
    assert ledger.charge(USER, 1, key="new", reference="r").applied is True
    assert ledger.account(USER).balance == balance - 1
    assert charges(c).count("k0") == 1


def test_a_replay_that_would_now_be_refused_is_still_a_replay(
    open_container: Callable[[], Container],
) -> None:
    c = open_container()
    fill(c, KEY_CACHE_SIZE + 5)
    ledger = c.ledger
    ledger.debit(USER, ledger.account(USER).available, key="drain", kind="adjustment")
    # The state alone would refuse (no funds); the table says k0 was applied: a replay.
    assert ledger.charge(USER, 1, key="k0", reference="r").applied is False
    with pytest.raises(InsufficientCreditsError):
        ledger.charge(USER, 1, key="new", reference="r")
    assert charges(c).count("k0") == 1


def test_after_a_restart_on_the_same_database(open_container: Callable[[], Container]) -> None:
    first = open_container()
    fill(first, KEY_CACHE_SIZE + 5)
    first.close()
    second = open_container()
    assert second.ledger.charge(USER, 1, key="k3", reference="r").applied is False
    with pytest.raises(IdempotencyConflictError):
        second.ledger.debit(USER, 1, key="k3")
    assert charges(second).count("k3") == 1


def test_a_save_that_slips_past_the_checks_is_refused_by_the_table(
    open_container: Callable[[], Container], clock: FixedClock
) -> None:
    c = open_container()
    fill(c, KEY_CACHE_SIZE + 5)
    account: CreditAccount = c.app.repository.get(account_id_for(USER))
    version = account.version
    # No ``earlier_keys`` context: the state alone does not know k0, so the charge applies...
    assert account.charge(1, key="k0", now=clock(), policy=OFF, reference="r") is True
    with pytest.raises(IntegrityError):
        c.app.save(account)  # ... and the unique key refuses it, events and all
    reloaded: CreditAccount = c.app.repository.get(account_id_for(USER))
    assert reloaded.version == version
    assert charges(c).count("k0") == 1


def test_a_key_past_72h_still_in_the_table_is_a_replay_until_pruned(
    open_container: Callable[[], Container], clock: FixedClock
) -> None:
    c = open_container()
    ledger = c.ledger
    ledger.grant(USER, FUNDS, key="funds")
    ledger.charge(USER, 1, key="old", reference="r")
    clock.advance(hours=73)
    ledger.charge(USER, 1, key="other", reference="r")  # the state forgets "old" (> 72 h)
    assert "old" not in c.app.repository.get(account_id_for(USER)).keys
    # Not in the state, not dropped by count: the first save is refused by the table's row,
    # the committer replays with every key checked, and answers "already applied".
    assert ledger.charge(USER, 1, key="old", reference="r").applied is False
    assert charges(c) == ["old", "other"]
    recorder: Any = c.app.recorder
    assert recorder.prune(int(clock().timestamp()) // 60 - 72 * 60) == 2  # funds, old
    assert ledger.charge(USER, 1, key="old", reference="r").applied is True
    assert charges(c) == ["old", "other", "old"]


def test_rows_older_than_72h_are_pruned_in_the_background(
    open_container: Callable[[], Container], clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "PRUNE_EVERY", 3)
    c = open_container()
    recorder: Any = c.app.recorder
    account_id = account_id_for(USER)
    c.ledger.grant(USER, FUNDS, key="funds")
    c.ledger.charge(USER, 1, key="a", reference="r")
    clock.advance(hours=73)
    c.ledger.charge(USER, 1, key="b", reference="r")  # the third row: prunes what is > 72 h
    pairs = [(account_id, k) for k in ("funds", "a", "b")]
    deadline = time.monotonic() + 10
    while len(recorder.idempotency_fingerprints(pairs)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(recorder.idempotency_fingerprints(pairs)) == [(account_id, "b")]


def test_two_containers_racing_one_key_make_one_effect(
    open_container: Callable[[], Container], clock: FixedClock
) -> None:
    a, b = open_container(), open_container()
    fill(a, KEY_CACHE_SIZE + 5)
    clock.advance(hours=1)
    threads, errors = 12, []
    outcomes: list[bool] = []
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        ledger = (a if index % 2 else b).ledger
        barrier.wait()
        try:
            for key in ("race", "k1"):  # a new key, and one older than the state keeps
                outcomes.append(ledger.charge(USER, 1, key=key, reference="r").applied)
        except Exception as exc:
            errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert errors == []
    assert outcomes.count(True) == 1
    keys = charges(a)
    assert keys.count("race") == 1
    assert keys.count("k1") == 1


def test_snapshots_stay_small_after_10000_keyed_charges(
    open_container: Callable[[], Container],
) -> None:
    c = open_container()
    fill(c, 10_000)
    snapshots = c.app.snapshots
    assert snapshots is not None
    newest: list[Any] = list(snapshots.get(account_id_for(USER), desc=True, limit=1))
    assert newest, "no snapshot was taken"
    assert len(newest[0].state["keys"]) == KEY_CACHE_SIZE
    stored = c.app.mapper.to_stored_event(newest[0])
    assert len(stored.state) < 30_000
    assert c.ledger.charge(USER, 1, key="k5", reference="r").applied is False
    assert c.ledger.charge(USER, 1, key="k9999", reference="r").applied is False


class LegacyLedger(Application[UUID]):
    """The ledger's tables written by the library's own recorder (before the key table)."""

    name = "ledger"


def test_upgrading_copies_recent_keys_into_the_new_table(
    blank_settings: Settings, clock: FixedClock
) -> None:
    settings = blank_settings  # a store from before the key table: nothing migrated yet
    env = {k: v for k, v in eventstore_env(settings).items() if "RECORDER_TOPIC" not in k}
    legacy = LegacyLedger(env=env)
    try:
        account = CreditAccount(user_id=USER, at=clock())
        account.grant(FUNDS, key="funds", now=clock())
        for i in range(KEY_CACHE_SIZE + 30):
            account.charge(1, key=f"k{i}", now=clock(), policy=OFF, reference="r")
        legacy.save(account)
    finally:
        legacy.close()
    c = bootstrap(settings, clock=clock)  # creates the key table, copies the last 72 h's keys
    try:
        assert table_rows(c) == 1
        clock.advance(hours=2)
        assert c.ledger.charge(USER, 1, key="k0", reference="r").applied is False
        with pytest.raises(IdempotencyConflictError):
            c.ledger.charge(USER, 5, key="k1", reference="r")
        assert charges(c).count("k0") == 1
    finally:
        c.close()
