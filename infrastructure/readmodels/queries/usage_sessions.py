"""Reads of the ``usage_sessions`` read model (projections/usage_sessions.py), newest first.

GPU time is joined at read time: a rental (``usage_rentals``) counts in the session of the
same user, credential and address that started last at or before ``rented_at`` (+ ``SLACK``,
the rent request's own tally time may read a little after the rental's): the session its rent
request was counted in. Sessions of a group are over ``idle_minutes`` apart, so one matches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from infrastructure.db.sql import Database

COLUMNS = (
    "session_id, seq, user_id, credential, address, user_agent, start_at, end_at, "
    "requests, proxy_fees, model_fees"
)
SLACK = 5_000_000  # microseconds
# Per session of the page: its rentals' GPU fees (those before the group's next session).
GPU_FEES = """
SELECT s.session_id, SUM(r.gpu_fees) FROM usage_sessions s
JOIN usage_rentals r ON r.user_id = s.user_id AND r.credential = s.credential
  AND r.address = s.address AND r.rented_at + ? >= s.start_at
  AND NOT EXISTS (
    SELECT 1 FROM usage_sessions n WHERE n.user_id = s.user_id
      AND n.credential = s.credential AND n.address = s.address
      AND n.start_at > s.start_at AND n.start_at <= r.rented_at + ?)
WHERE s.session_id IN ({marks}) GROUP BY s.session_id
"""


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
    gpu_fees: int = 0  # GPU time of the rentals made in this session (billed so far)

    @property
    def credits_spent(self) -> int:
        return self.proxy_fees + self.model_fees + self.gpu_fees


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
        sessions = [_session(r) for r in rows]
        if not sessions:
            return []
        marks = ", ".join("?" for _ in sessions)
        gpu = dict(
            tx.fetchall(
                GPU_FEES.format(marks=marks),
                (SLACK, SLACK, *(s.session_id for s in sessions)),
            )
        )
    return [replace(s, gpu_fees=int(gpu.get(s.session_id) or 0)) for s in sessions]
