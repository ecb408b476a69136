"""Group commit under faults and contention (SQLite and PostgreSQL).

- a command that raises something other than a ``DomainError`` fails alone: the other
  commands of its batch commit;
- ``LedgerService.transact`` (settlement, metering, rent) does not starve while group
  commits hammer the same account.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from domain.credits import CreditAccount, account_id_for
from domain.errors import ConcurrencyError, InsufficientCreditsError
from interfaces.bootstrap import Container


def _names(container: Container, user: str, name: str) -> list[str]:
    return [e.data["key"] for e in container.ledger.history(user) if e.name == name]


def test_a_command_that_raises_fails_alone_and_its_batch_commits(container: Container) -> None:
    ledger = container.ledger
    committer = ledger.committer
    policy = ledger.policy
    for user in ("u1", "u2"):
        ledger.grant(user, 1_000, key="funds")
    entered, gate = threading.Event(), threading.Event()

    def block(_account: CreditAccount, _now: datetime) -> None:
        entered.set()
        gate.wait(10)

    def bad(account: CreditAccount, now: datetime) -> None:
        account.charge(7, key="bad", now=now, policy=policy)  # changes the state, then fails
        raise RuntimeError("boom")

    outcomes: dict[str, Any] = {}

    def submit(name: str, call: Callable[[], Any]) -> threading.Thread:
        def work() -> None:
            try:
                outcomes[name] = call()
            except Exception as exc:
                outcomes[name] = exc

        thread = threading.Thread(target=work)
        thread.start()
        return thread

    blocker = submit("block", lambda: committer.execute(account_id_for("u1"), block))
    assert entered.wait(10)
    batches = committer.batches
    threads = [
        submit(f"{user}-{n}", lambda u=user, n=n: ledger.charge(u, 1, key=f"k{n}"))
        for user in ("u1", "u2")
        for n in range(3)
    ]
    threads.append(submit("bad", lambda: committer.execute(account_id_for("u1"), bad)))
    threads += [submit(f"u1-{n}", lambda n=n: ledger.charge("u1", 1, key=f"k{n}")) for n in (3, 4)]
    deadline = time.monotonic() + 10
    while committer._queue.qsize() < len(threads) and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for thread in [blocker, *threads]:
        thread.join(30)
    assert isinstance(outcomes["bad"], RuntimeError)
    failed = {k: v for k, v in outcomes.items() if k != "bad" and isinstance(v, Exception)}
    assert failed == {}
    assert committer.batches - batches == 2  # the blocked one, then all the others together
    assert ledger.account("u1").balance == 1_000 - 5
    assert ledger.account("u2").balance == 1_000 - 3
    assert "bad" not in _names(container, "u1", "Charged")


def test_transacts_all_succeed_while_charges_hammer_the_account(container: Container) -> None:
    ledger = container.ledger
    user = "busy"
    ledger.grant(user, 10**12, key="funds")
    stop = threading.Event()
    charged = [0]
    counting = threading.Lock()

    def hammer(t: int) -> None:
        n = 0
        while not stop.is_set():
            ledger.charge(user, 1, key=f"h{t}-{n}")
            n += 1
            with counting:
                charged[0] += 1

    hammers = [threading.Thread(target=hammer, args=(t,)) for t in range(4)]
    for thread in hammers:
        thread.start()
    errors: list[Exception] = []
    transacts = 20
    try:
        while charged[0] < 50:  # the committer is busy before the first transact
            time.sleep(0.01)
        for i in range(transacts):

            def settle(
                account: CreditAccount, now: datetime, i: int = i
            ) -> tuple[int, CreditAccount]:
                time.sleep(0.005)  # as loading the payment or instance does
                account.grant(1_000, key=f"settle-{i}", now=now, source="payment")
                return i, account

            try:
                assert ledger.transact(user, settle) == i
            except ConcurrencyError as exc:
                errors.append(exc)
    finally:
        stop.set()
        for thread in hammers:
            thread.join(30)
    assert errors == []
    assert len(_names(container, user, "Granted")) == 1 + transacts
    view = ledger.account(user)
    assert view.balance == 10**12 + transacts * 1_000 - charged[0]


def test_an_atomic_command_refused_half_way_saves_nothing(container: Container) -> None:
    ledger = container.ledger
    ledger.grant("u1", 1_000, key="funds")
    policy = ledger.policy

    def half(account: CreditAccount, now: datetime) -> None:
        account.charge(10, key="half", now=now, policy=policy)
        account.charge(10**9, key="too-much", now=now, policy=policy)  # refused

    with pytest.raises(InsufficientCreditsError):
        ledger.committer.execute(account_id_for("u1"), half, atomic=True)
    assert ledger.account("u1").balance == 1_000
    assert _names(container, "u1", "Charged") == []
