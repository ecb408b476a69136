"""ProxyUsage: one flush of a serving process's request counters, recorded for reports.

The proxy never writes an event per request; each process counts requests, errors and
latency per instance in memory and records them here every few seconds, one aggregate per
flush (so flushes from many processes never contend).

The same flush carries ``sessions``: per caller (user, credential, client address) the
requests since the last flush, their first and last times and the credits they spent
(``SessionTally``). The ``usage_sessions`` projection folds them into usage sessions, closed
after ``idle_minutes`` without requests (recorded in the event, so a rebuild folds the same).
Events recorded before sessions were kept load with none.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate, event

from domain.pan import contains_pan

AGENT_CHARS = 200  # a user agent is kept up to this many characters


class ProxyUsage(Aggregate):
    @event("Recorded")
    def __init__(
        self,
        process_id: str,
        rows: list[dict[str, Any]],
        at: datetime,
        sessions: list[dict[str, Any]] | None = None,
        idle_minutes: int = 0,
    ) -> None:
        """``rows``: {instance_id, owner, provider, requests, errors, latency_ms_sum} each;
        ``sessions``: ``SessionTally.drain`` rows."""
        self.process_id = process_id
        self.rows = rows
        self.at = at
        self.sessions = sessions or []
        self.idle_minutes = idle_minutes


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: ``credential`` is ``apikey:<key id>`` or ``session:<login session
    id>`` (ids, never the secret), ``address`` the client's IP."""

    credential: str
    address: str
    user_agent: str = ""


@dataclass(slots=True)
class _Tally:
    first: float  # monotonic seconds
    last: float
    agent: str
    requests: int = 0
    proxy_fees: int = 0
    model_fees: int = 0


FEE_KINDS = ("proxy_fees", "model_fees")


class SessionTally:
    """Requests and fees per (user, credential, address) since the last flush, in memory.

    ``count`` is called once per request (no I/O, no clock but ``time.monotonic``);
    ``drain`` (on a flushing thread) turns the monotonic times into business times with one
    clock reading. A lock keeps a count from landing in a tally already drained.
    """

    def __init__(self) -> None:
        self._tallies: dict[tuple[str, str, str], _Tally] = {}
        self._lock = threading.Lock()

    def count(self, user_id: str, caller: Caller, fee: int, kind: str) -> None:
        now = time.monotonic()
        key = (user_id, caller.credential, caller.address)
        with self._lock:
            tally = self._tallies.get(key)
            if tally is None:
                tally = self._tallies[key] = _Tally(now, now, caller.user_agent)
            tally.last = now
            tally.agent = caller.user_agent
            tally.requests += 1
            setattr(tally, kind, getattr(tally, kind) + fee)

    def refund(self, user_id: str, caller: Caller, fee: int, kind: str) -> None:
        """The fee ``count`` added was given back (nothing was delivered)."""
        with self._lock:
            tally = self._tallies.get((user_id, caller.credential, caller.address))
            if tally is not None:
                setattr(tally, kind, max(0, getattr(tally, kind) - fee))

    def drain(self, now: datetime) -> list[dict[str, Any]]:
        """The rows since the last drain, times in epoch microseconds; counters reset."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            mono = time.monotonic()
        wall = int(now.timestamp()) * 1_000_000 + now.microsecond
        rows = []
        for (user_id, credential, address), t in tallies.items():
            agent = t.agent[:AGENT_CHARS]
            rows.append(
                {
                    "user_id": user_id,
                    "credential": credential,
                    "address": address,
                    "user_agent": "" if contains_pan(agent) else agent,
                    "first_at": wall - round((mono - t.first) * 1_000_000),
                    "last_at": wall - round((mono - t.last) * 1_000_000),
                    "requests": t.requests,
                    "proxy_fees": t.proxy_fees,
                    "model_fees": t.model_fees,
                }
            )
        return rows

    def __bool__(self) -> bool:
        return bool(self._tallies)
