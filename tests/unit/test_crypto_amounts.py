"""ExactAmount: one crypto request per exact amount while that request can still be paid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.crypto_amounts import AmountTakenError, ExactAmount, exact_amount_id

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def test_the_id_names_network_and_amount() -> None:
    reserved = ExactAmount("ethereum", 10_000_017, "p1", NOW + timedelta(days=7), NOW)
    assert reserved.id == exact_amount_id("ethereum", 10_000_017)
    assert exact_amount_id("base", 10_000_017) != reserved.id
    assert exact_amount_id("ethereum", 10_000_018) != reserved.id


def test_held_until_its_request_can_no_longer_be_paid_then_free() -> None:
    until = NOW + timedelta(days=7)
    reserved = ExactAmount("ethereum", 10_000_017, "p1", until, NOW)
    assert reserved.holder(NOW) == "p1"
    assert reserved.holder(until - timedelta(microseconds=1)) == "p1"
    with pytest.raises(AmountTakenError):
        reserved.reserve("p2", until=until + timedelta(days=8), now=NOW + timedelta(days=1))
    reserved.reserve("p1", until=until, now=NOW)  # the same request again: no harm
    assert reserved.holder(until) is None
    reserved.reserve("p2", until=until + timedelta(days=8), now=until)
    assert reserved.holder(until) == "p2"
    assert [type(e).__name__ for e in reserved.collect_events()] == [
        "Reserved",
        "Reassigned",
        "Reassigned",
    ]
