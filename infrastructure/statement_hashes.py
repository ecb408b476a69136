"""Statement hash chains: read the account's stored events, record and verify closing hashes.

The chain itself is ``domain.statement_chain``; this module feeds it the stored rows (decoded
the way the library stored them) and keeps ``statement_hashes`` (docs/adr/0019).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import Application

from domain.credits import account_id_for
from domain.statement_chain import MonthChain, StoredRecord, first_mismatch, month_chain
from infrastructure.sql import Database

_decoder = msgspec.json.Decoder()


def _at(state: dict[str, Any]) -> datetime:
    value = state.get("at") or state["timestamp"]
    if isinstance(value, dict):
        value = value.get("_data_")
    return datetime.fromisoformat(str(value))


def stored_records(app: Application[UUID], user_id: str) -> list[StoredRecord]:
    """The account's stored events in version order (empty if it has none)."""
    recorder: Any = app.recorder
    cipher, compressor = app.mapper.cipher, app.mapper.compressor
    out = []
    for stored in recorder.select_events(account_id_for(user_id)):
        state = stored.state
        if cipher is not None:
            state = cipher.decrypt(state)
        if compressor is not None:
            state = compressor.decompress(state)
        data = _decoder.decode(state)
        originator = stored.originator_id
        out.append(
            StoredRecord(
                originator_id=originator if isinstance(originator, UUID) else UUID(originator),
                version=int(stored.originator_version),
                topic=stored.topic,
                state=data,
                at=_at(data),
            )
        )
    return out


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
