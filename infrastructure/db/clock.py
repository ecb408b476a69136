"""The database server's clock, the reference every replica's business time is bounded by.

Sampled at most every ``refresh`` seconds (one ``SELECT clock_timestamp()``, in the
background after the first); in between it advances on this process's monotonic clock, so a
step of the wall clock does not move it.
SQLite has no server: its clock is this machine's, so there is nothing to bound against.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from domain.clocks import BoundedClock, system_clock
from domain.ports.clock import Clock
from infrastructure.db.sql import Database
from infrastructure.settings import Settings

log = logging.getLogger(__name__)


class DatabaseClock:
    """PostgreSQL's ``clock_timestamp()``, as of now (estimated between samples)."""

    def __init__(self, db: Database, *, refresh: float = 10.0) -> None:
        self.db = db
        self.refresh = refresh
        self._lock = threading.Lock()
        self._sample: tuple[datetime, float] | None = None  # (server time, monotonic then)
        self._next = 0.0

    def _read(self) -> None:
        started = time.monotonic()
        try:
            with self.db.read() as tx:
                row = tx.fetchone("SELECT clock_timestamp()")
        except Exception:  # keep the last sample; the next call after ``refresh`` tries again
            log.warning("reading the database clock failed", exc_info=True)
            return
        ended = time.monotonic()
        server: datetime = row[0] if row else datetime.now(UTC)
        with self._lock:
            self._sample = (server.astimezone(UTC), (started + ended) / 2)

    def __call__(self) -> datetime:
        with self._lock:
            sample, due = self._sample, time.monotonic() >= self._next
            if due:
                self._next = time.monotonic() + self.refresh
        if due and sample is None:  # the first reading waits for the server
            self._read()
            sample = self._sample
        elif due:  # later ones refresh in the background: the caller is a committer
            threading.Thread(target=self._read, name="db-clock", daemon=True).start()
        if sample is None:  # the server could not be read: nothing to bound against
            return datetime.now(UTC)
        server, at = sample
        return server + timedelta(seconds=time.monotonic() - at)


def business_clock(
    settings: Settings, db: Database, clock: Clock, reference: Clock | None = None
) -> Clock:
    """The clock the services run on: ``clock`` bounded by ``reference`` (if given) or, for
    the real clock on PostgreSQL, by the server's clock (``CLOCK_MAX_AHEAD_SECONDS``).

    An injected clock (tests) is taken as it is unless a reference comes with it.
    """
    if reference is None:
        if clock is not system_clock or settings.db.type != "postgres":
            return clock
        reference = DatabaseClock(db)
    return BoundedClock(
        clock, reference, timedelta(seconds=settings.ledger.clock_max_ahead_seconds)
    )
