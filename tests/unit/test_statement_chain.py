"""The statement hash chain's documented encoding (docs/events.md) and month boundaries."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from uuid import UUID

from domain.statement_chain import GENESIS, StoredRecord, first_mismatch, month_chain

ACCOUNT = UUID("12345678-1234-5678-1234-567812345678")


def _record(version: int, at: datetime, amount: int) -> StoredRecord:
    state = {"amount": amount, "at": {"_type_": "datetime_iso", "_data_": at.isoformat()}}
    return StoredRecord(ACCOUNT, version, "domain.credits:CreditAccount.Granted", state, at)


def test_encoding_is_the_documented_one() -> None:
    at = datetime(2026, 11, 2, tzinfo=UTC)
    chain = month_chain("2026-11", [_record(1, at, 5)])
    text = (
        '{"originator_id":"12345678-1234-5678-1234-567812345678","state":{"amount":5,'
        '"at":{"_data_":"2026-11-02T00:00:00+00:00","_type_":"datetime_iso"}},'
        '"topic":"domain.credits:CreditAccount.Granted","version":1}'
    )
    expected = hashlib.sha256((GENESIS + text).encode()).hexdigest()
    assert (chain.opening_hash, chain.closing_hash) == (GENESIS, expected)


def test_months_chain_and_later_events_do_not_change_a_closed_month() -> None:
    oct_, nov, dec = (datetime(2026, m, 15, tzinfo=UTC) for m in (10, 11, 12))
    records = [_record(1, oct_, 1), _record(2, nov, 2), _record(3, dec, 3)]
    october, november = month_chain("2026-10", records), month_chain("2026-11", records)
    assert november.opening_hash == october.closing_hash
    assert [link.version for link in november.links] == [2]
    assert month_chain("2026-11", records[:2]) == november
    recorded = [(link.version, link.hash) for link in november.links]
    assert first_mismatch(november.opening_hash, recorded, november) is None
    changed = month_chain("2026-11", [records[0], _record(2, nov, 20)])
    assert first_mismatch(november.opening_hash, recorded, changed) == (
        "2026-11: event version 2 (CreditAccount.Granted) no longer matches"
    )
