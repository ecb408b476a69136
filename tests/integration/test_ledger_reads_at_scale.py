"""Time travel and statements on a long, busy account give today's answers from a part of it.

A generated log (``tests.bench.scale_log``: grants, charges, holds placed, captured, released
and expired, payments, instances) with one busy account over 45 days. ``balance --at`` loads a
snapshot (its spend buckets packed, docs/adr/0033) plus a few events: the whole view equals
the one folded from every event, at random instants, at events' own instants and around hold
expiries. A month's statement reads the month (opening balance from the account at its start,
the chain from the previous month's recorded closing hash): it equals the statement folded from
every event with the chain from the first, and reads a bounded part of the stream.
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from domain.credits import CreditAccount, account_id_for
from domain.guardrails import WINDOW_MINUTES, minute_of
from domain.statement_chain import month_chain
from domain.statements import Statement, statement
from infrastructure.eventstore.statement_hashes import stored_records
from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.statement_view import build_statement
from tests.bench.scale_log import REFERENCE_USER, START, Shape, generate, whale_user
from tests.conftest import FixedClock
from tests.support.pg import Cluster

SHAPE = Shape(
    events=24_000, accounts=40, whales=2, whale_events=9_000, reference_events=300, days=45
)
US = timedelta(microseconds=1)


@pytest.fixture(scope="module")
def loaded(pg_cluster: Cluster) -> Iterator[Container]:
    name = pg_cluster.create_database(f"reads_{uuid.uuid4().hex[:10]}")
    container = bootstrap(load_settings(pg_cluster.env(name), env_file=None))
    try:
        generate(container.app, pg_cluster.dsn(name), SHAPE, snapshot_users=(whale_user(0),))
        yield container
    finally:
        container.close()


def _events(container: Container, user: str) -> list[Any]:
    return list(container.app.events.get(account_id_for(user)))


def _instants(events: list[Any], rng: random.Random) -> list[datetime]:
    """Random instants, events' own instants, and hold expiries with a microsecond either side."""
    first, last = events[0].at, events[-1].at
    picks = [first + (last - first) * rng.random() for _ in range(12)]
    picks += [e.at for e in rng.sample(events, 8)]
    expiries = [e.expires_at for e in events if type(e).__name__ == "HoldPlaced"]
    assert len(expiries) >= 8
    for expiry in rng.sample(expiries, 8):
        picks += [expiry - US, expiry, expiry + US]
    return sorted(picks)


def _brute_spend(account: CreditAccount, at: datetime) -> dict[str, int]:
    now = minute_of(account.business_time(at))
    return {
        name: sum(amount for minute, amount in account.buckets if minute > now - width)
        for name, width in WINDOW_MINUTES.items()
        if name not in account.resets
    }


def test_balance_at_equals_the_view_folded_from_every_event(loaded: Container) -> None:
    ledger = loaded.ledger
    for user in (whale_user(0), REFERENCE_USER):
        events = _events(loaded, user)
        folded: Any = None
        index = 0
        live = 0
        for instant in _instants(events, random.Random(user)):
            while index < len(events) and events[index].at <= instant:
                folded = events[index].mutate(folded)
                index += 1
            expected = ledger._view(copy.deepcopy(folded), instant)
            view = ledger.account_at(user, instant)
            assert view.version == index
            assert view == expected, (user, instant)
            spent = _brute_spend(folded, instant)
            assert {k: view.window_spend[k] for k in spent} == spent
            live += bool(view.holds)
        assert live > 0  # some instants fall inside a live hold


def _folded_statement(container: Container, user: str, month: str) -> Statement:
    """Today's answer the long way: every event folded, the chain from the first event."""
    result = statement(month, container.ledger.history(user))
    chain = month_chain(month, stored_records(container.app, user))
    result.opening_hash, result.closing_hash = chain.opening_hash, chain.closing_hash
    return result


def _counting_reads(container: Container) -> list[int]:
    recorder: Any = container.app.recorder
    original = recorder.select_events
    seen = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        rows = original(*args, **kwargs)
        seen[0] += len(rows)
        return rows

    recorder.select_events = counted
    return seen


def test_a_months_statement_equals_the_full_fold_and_reads_the_month(
    loaded: Container,
) -> None:
    whale, other = whale_user(0), whale_user(1)
    january, february = START.strftime("%Y-%m"), (START + timedelta(days=40)).strftime("%Y-%m")
    expected = {m: _folded_statement(loaded, whale, m) for m in (january, february)}
    assert expected[february].opening == expected[january].closing != 0
    assert expected[february].charges > 0
    assert expected[february].reconciles
    assert build_statement(loaded, other, february) == _folded_statement(loaded, other, february)
    events = _events(loaded, whale)
    in_february = sum(1 for e in events if e.at >= START + timedelta(days=31))
    assert build_statement(loaded, whale, january) == expected[january]
    reads = _counting_reads(loaded)
    assert build_statement(loaded, whale, february) == expected[february]  # after january's
    # february's events, a snapshot's worth, the searches and the walk back to open holds
    assert reads[0] < in_february + 600 < len(events), (reads[0], in_february, len(events))


def test_captures_of_holds_placed_before_the_month_keep_their_reference_and_kind(
    container: Container, clock: FixedClock
) -> None:
    """The walk back from the month's start finds the holds open then, as folding from the
    first event did; a month after an unrecorded one chains from the first event."""
    ledger = container.ledger
    ledger.grant("carried", 90_000_000, key="g", reason="promotion")
    clock.advance(days=29, hours=11)  # 2026-11-30 23:00
    for n, reference in enumerate(("gpu-a", "gpu-b", "gpu-c")):
        expires = clock.now + timedelta(hours=3)
        ledger.place_hold(
            "carried",
            f"h{n}",
            5_000_000,
            expires_at=expires,
            key=f"p{n}",
            reason="GPU time" if n else "model fees",
            reference=reference,
        )
    ledger.release("carried", "h2", key="r2")
    ledger.charge("carried", 100_000, key="c0", reference="proxy", reason="proxy fee")
    clock.advance(hours=1, minutes=30)  # December: h0 and h1 captured
    ledger.capture("carried", "h0", 1_000_000, key="k0")
    ledger.capture("carried", "h1", 2_000_000, key="k1")
    clock.advance(days=40)  # both months have ended
    december = build_statement(container, "carried", "2026-12")
    assert december == _folded_statement(container, "carried", "2026-12")
    assert december.charges_by_reference == {"gpu-a": 1_000_000, "gpu-b": 2_000_000}
    assert december.charges_by_kind == {"model fees": 1_000_000, "GPU time": 2_000_000}
    assert build_statement(container, "carried", "2026-11") == _folded_statement(
        container, "carried", "2026-11"
    )
