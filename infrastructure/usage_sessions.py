"""Reads of the ``usage_sessions`` read model (projections/usage_sessions.py), newest first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infrastructure.sql import Database

COLUMNS = (
    "session_id, seq, user_id, credential, address, user_agent, start_at, end_at, "
    "requests, proxy_fees, model_fees"
)


@dataclass(frozen=True)
class UsageSession:
    session_id: str
    seq: int  # the paging cursor: sessions are listed by opening order, newest first
    user_id: str
    credential: str  # "apikey:<key id>" or "session:<login session id>"
    address: str
    user_agent: str
    start_at: int  # epoch microseconds: the first request
    end_at: int  # the last request so far
    requests: int
    proxy_fees: int  # micro-USD
    model_fees: int

    @property
    def credits_spent(self) -> int:
        return self.proxy_fees + self.model_fees


def _session(row: Any) -> UsageSession:
    return UsageSession(
        str(row[0]),
        int(row[1]),
        str(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        int(row[6]),
        int(row[7]),
        int(row[8]),
        int(row[9]),
        int(row[10]),
    )


def usage_sessions(
    db: Database, user_id: str, *, limit: int = 50, before: int | None = None
) -> list[UsageSession]:
    """A user's sessions, newest opened first; page with ``before`` = the last ``seq`` seen."""
    where = "user_id = ?"
    params: list[object] = [user_id]
    if before is not None:
        where += " AND seq < ?"
        params.append(before)
    with db.read() as tx:
        rows = tx.fetchall(
            f"SELECT {COLUMNS} FROM usage_sessions WHERE {where} ORDER BY seq DESC LIMIT ?",
            (*params, limit),
        )
    return [_session(r) for r in rows]
