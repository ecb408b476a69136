"""Statement hash chains: read the account's stored events, record and verify closing hashes.

The chain itself is ``domain.statement_chain``; this module feeds it the stored rows (decoded
the way the library stored them) and keeps ``statement_hashes`` (docs/adr/0019).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import Application

from domain.credits import account_id_for
from domain.statement_chain import MonthChain, StoredRecord, first_mismatch, month_chain
from infrastructure.db.sql import Database

_decoder = msgspec.json.Decoder()
RECORD_PAGE = 2_000  # stored events read per query


def _at(state: dict[str, Any]) -> datetime:
    value = state.get("at") or state["timestamp"]
    if isinstance(value, dict):
        value = value.get("_data_")
    return datetime.fromisoformat(str(value))


def stored_records(app: Application[UUID], user_id: str) -> list[StoredRecord]:
    """The account's stored events in version order (empty if it has none)."""
    return list(iter_records(app, account_id_for(user_id)))


def iter_records(
    app: Application[UUID],
    account_id: UUID,
    *,
    after: int = 0,
    upto: int | None = None,
    desc: bool = False,
    page: int = RECORD_PAGE,
) -> Iterator[StoredRecord]:
    """The account's stored events with ``after < version <= upto``, a page per query, in
    version order (newest first if ``desc``): a month of a long stream is read without the
    rest of it, and without holding it all."""
    recorder: Any = app.recorder
    low, high = after, upto
    while True:
        rows = recorder.select_events(account_id, gt=low, lte=high, desc=desc, limit=page)
        for stored in rows:
            yield _record(app, stored)
        if len(rows) < page:
            return
        if desc:
            high = int(rows[-1].originator_version) - 1
        else:
            low = int(rows[-1].originator_version)


def _record(app: Application[UUID], stored: Any) -> StoredRecord:
    state = stored.state
    cipher, compressor = app.mapper.cipher, app.mapper.compressor
    if cipher is not None:
        state = cipher.decrypt(state)
    if compressor is not None:
        state = compressor.decompress(state)
    data = _decoder.decode(state)
    originator = stored.originator_id
    return StoredRecord(
        originator_id=originator if isinstance(originator, UUID) else UUID(originator),
        version=int(stored.originator_version),
        topic=stored.topic,
        state=data,
        at=_at(data),
    )


@dataclass(frozen=True)
class Recorded:
    user_id: str
    month: str
    opening_hash: str
    closing_hash: str
    links: list[tuple[int, str]]


class StatementHashes:
    """The ``statement_hashes`` table: one row per user and closed month, written once."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, user_id: str, chain: MonthChain, now: datetime) -> None:
        links = json.dumps([[link.version, link.hash] for link in chain.links])
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO statement_hashes (user_id, month, account_id, opening_hash,"
                " closing_hash, links, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (user_id, month) DO NOTHING",
                (
                    user_id,
                    chain.month,
                    str(account_id_for(user_id)),
                    chain.opening_hash,
                    chain.closing_hash,
                    links,
                    now.isoformat(),
                ),
            )

    def latest_before(self, user_id: str, month: str) -> tuple[str, str] | None:
        """The newest recorded month before ``month`` and its closing hash (None if none)."""
        with self.db.read() as tx:
            row = tx.fetchone(
                "SELECT month, closing_hash FROM statement_hashes WHERE user_id = ? AND month < ?"
                " ORDER BY month DESC LIMIT 1",
                (user_id, month),
            )
        return None if row is None else (str(row[0]), str(row[1]))

    def recorded(self, user_id: str | None = None, month: str | None = None) -> list[Recorded]:
        sql = "SELECT user_id, month, opening_hash, closing_hash, links FROM statement_hashes"
        where, params = [], []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if month is not None:
            where.append("month = ?")
            params.append(month)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.db.read() as tx:
            rows = tx.fetchall(sql + " ORDER BY user_id, month", params)
        return [
            Recorded(r[0], r[1], r[2], r[3], [(int(v), str(h)) for v, h in json.loads(r[4])])
            for r in rows
        ]


@dataclass(frozen=True)
class Verdict:
    user_id: str
    month: str
    closing_hash: str
    problem: str | None


def verify(
    app: Application[UUID], hashes: StatementHashes, user_id: str | None, month: str | None
) -> list[Verdict]:
    """Recompute every recorded month (of one user, or all) from the event store."""
    verdicts = []
    cache: dict[str, list[StoredRecord]] = {}
    for row in hashes.recorded(user_id, month):
        if row.user_id not in cache:
            cache[row.user_id] = stored_records(app, row.user_id)
        chain = month_chain(row.month, cache[row.user_id])
        problem = first_mismatch(row.opening_hash, row.links, chain)
        if problem is None and chain.closing_hash != row.closing_hash:
            problem = f"{row.month}: closing hash differs"
        verdicts.append(Verdict(row.user_id, row.month, row.closing_hash, problem))
    return verdicts
