"""Two ``verify-projections`` runs at once (as from two containers, both PID 1) each use
scratch tables of their own: both succeed and neither drops the other's tables."""

from __future__ import annotations

import contextlib
import threading
from datetime import timedelta

from infrastructure.readmodels.rebuild import Verification, verify
from interfaces.bootstrap import Container
from projections.ledger import ALL
from tests.conftest import FixedClock

USD = 1_000_000


def test_two_verify_runs_at_once_both_pass(container: Container, clock: FixedClock) -> None:
    ledger = container.ledger
    for u in range(3):
        ledger.grant(f"u{u}", 100 * USD, key="g")
        ledger.charge(f"u{u}", USD, key="c")
        ledger.place_hold(f"u{u}", "h", USD, expires_at=clock.now + timedelta(minutes=5), key="h")
    container.runner.catch_up()
    both_filling = threading.Barrier(2, timeout=10)

    def meet(_position: int, _head: int, _count: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_filling.wait()  # both runs have made their scratch tables and are filling them

    results: dict[int, list[Verification] | BaseException] = {}

    def run(n: int) -> None:
        try:
            results[n] = verify(container.db, container.events, ALL, progress=meet)
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for n in range(2):
        outcome = results[n]
        assert isinstance(outcome, list), outcome
        assert [v.name for v in outcome if not v.ok] == []
    with container.db.read() as tx:
        left = tx.fetchall(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE '%verify%'"
            if tx.dialect == "postgres"
            else "SELECT name FROM sqlite_master WHERE name LIKE '%verify%'"
        )
    assert left == []
