"""The scale benchmark's path at a tiny size (issue 24), so its code cannot rot.

Generate 20,000 events with ``tests.bench.scale_log`` (templates checked against the real
mapper), load them with COPY into the suite's PostgreSQL, rebuild and verify every projection,
then time travel and audit pages on the long account: the answers equal a full replay, and
they read a bounded number of stored events whatever the stream's length.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import pytest
from eventsourcing.persistence import StoredEvent

from domain.credits import CreditAccount, account_id_for
from infrastructure.readmodels.rebuild import rebuild, verify
from infrastructure.settings import load_settings
from interfaces.bootstrap import Container, bootstrap
from projections.ledger import ALL
from tests.bench.scale_log import REFERENCE_USER, START, Shape, generate, whale_user
from tests.support.pg import Cluster

SHAPE = Shape(
    events=20_000, accounts=60, whales=1, whale_events=3_000, reference_events=300, days=30
)


@pytest.fixture(scope="module")
def loaded(pg_cluster: Cluster) -> Iterator[tuple[Container, Any]]:
    """One generated log for the module's tests (the first only reads, the second too)."""
    name = pg_cluster.create_database(f"scale_{uuid.uuid4().hex[:10]}")
    container = bootstrap(load_settings(pg_cluster.env(name), env_file=None))
    try:
        counts = generate(container.app, pg_cluster.dsn(name), SHAPE)
        yield container, counts
    finally:
        container.close()


def _replayed(container: Container, user: str, version: int | None = None) -> CreditAccount:
    """The account folded from every event (no snapshot), as time travel used to do."""
    account: Any = None
    for event in container.app.events.get(account_id_for(user), lte=version):
        account = cast(Any, event).mutate(account)
    assert account is not None
    return account  # type: ignore[no-any-return]


def _counting_reads(container: Container) -> list[int]:
    """Count the stored events the recorder returns from now on."""
    recorder: Any = container.app.recorder
    original = recorder.select_events
    seen = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        rows = original(*args, **kwargs)
        seen[0] += len(rows)
        return rows

    recorder.select_events = counted
    return seen


def test_generated_log_loads_rebuilds_and_verifies(loaded: tuple[Container, Any]) -> None:
    container, counts = loaded
    assert 18_000 <= counts.events <= 24_000
    assert {"Charged", "HoldCaptured", "Granted", "Metered", "Succeeded", "Recorded"} <= set(
        counts.by_name
    )
    assert counts.keys > 0
    assert counts.snapshots >= SHAPE.whale_events // 100
    notifications = container.events.recorder.select_notifications(start=1, limit=25_000)
    assert len(notifications) == counts.events
    for n in random.Random(1).sample(notifications, 500):  # the app reads every row
        container.app.mapper.to_domain_event(
            StoredEvent(n.originator_id, n.originator_version, n.topic, n.state)
        )
    reports = rebuild(container.db, container.events, ALL)
    assert all(r.events == counts.events for r in reports)
    results = verify(container.db, container.events, ALL)
    assert all(r.ok for r in results), results


def test_time_travel_and_audit_pages_read_a_bounded_part_of_the_stream(
    loaded: tuple[Container, Any],
) -> None:
    container, _ = loaded
    ledger, whale = container.ledger, whale_user(0)
    rng = random.Random(3)
    end = START + timedelta(days=SHAPE.days)
    full = ledger.history(whale)
    assert len(full) == SHAPE.whale_events
    for _ in range(5):
        instant = START + (end - START) * rng.uniform(0.1, 1.0)
        view = ledger.account_at(whale, instant)
        expected = [e for e in full if e.at <= instant][-1].version
        assert view.version == expected
        assert view.balance == _replayed(container, whale, expected).balance
        page = ledger.history(whale, since=instant, limit=50)
        assert [e.version for e in page] == [e.version for e in full if e.at >= instant][:50]
    assert [e.version for e in ledger.history(whale, limit=50)] == list(range(1, 51))
    reads = _counting_reads(container)
    instant = START + (end - START) * 0.77
    ledger.account_at(whale, instant)
    ledger.history(whale, since=instant, limit=50)
    # a snapshot's worth of events, the search's probes, and one page: not the whole stream
    assert reads[0] < 400, reads[0]
    later = end + timedelta(days=SHAPE.days)  # the last commands may fall after ``end``
    assert ledger.account_at(REFERENCE_USER, later).version == SHAPE.reference_events
