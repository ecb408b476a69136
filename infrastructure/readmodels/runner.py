"""Runs projections: tails the event log and applies each batch with its tracking position.

Exactly once: a batch's rows and the new position commit in one transaction, and the
position row is locked (``FOR UPDATE`` / SQLite's write lock) and re-checked first, so two
runners (replicas) never apply the same events twice. A crash loses at most an uncommitted
batch, which is read again on restart. Notifications (in-process saves, PostgreSQL
``NOTIFY``) wake the runner; a watchdog poll catches up if they stop arriving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from infrastructure.db.sql import Database
from infrastructure.eventstore.event_log import EventLog
from infrastructure.readmodels.store import read_state, set_position, write_batch
from projections.base import Batch, Projection, folds

log = logging.getLogger(__name__)


class ProjectionRunner:
    """Keeps a set of projections caught up with the log."""

    def __init__(
        self,
        db: Database,
        events: EventLog,
        projections: Sequence[Projection],
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
    ) -> None:
        self.db = db
        self.events = events
        self.projections = list(projections)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.last_error: str | None = None
        self.processed = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()

    # ------------------------------------------------------------------ steps

    def step(self, projection: Projection) -> int:
        """Apply the next batch of events to one projection; return how many were read."""
        with self.db.snapshot() as tx:
            seen = read_state(tx, projection.name).position
        events = self.events.read(seen, self.batch_size)
        if not events:
            return 0
        batch, wants = Batch(), folds(projection)
        for event in events:
            if wants is None or wants(event.name):
                batch.add(projection.fold(event))
        with self.db.transaction() as tx:
            state = read_state(tx, projection.name, lock=True)
            if state.position != seen:
                return -1  # another runner moved it (or a rebuild switched): read again
            if batch:
                write_batch(tx, batch, state.generation)
            set_position(tx, projection.name, events[-1].position)
        self.processed += len(events)
        return len(events)

    def catch_up(self) -> int:
        """Process until every projection has read the whole log; return events applied."""
        total = 0
        for projection in self.projections:
            while True:
                count = self.step(projection)
                if count == 0:
                    break
                total += max(count, 0)
        with self._progress:
            self._progress.notify_all()
        return total

    def catch_up_one(self, name: str, deadline: float) -> bool:
        """Apply the whole log to one projection now, for a read that must see every answered
        write (exactly once, as ``step``); False if ``deadline`` (monotonic) came first."""
        projection = next(p for p in self.projections if p.name == name)
        while time.monotonic() < deadline:
            if self.step(projection) == 0:
                return True
        return False

    # ------------------------------------------------------------ background

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="projection-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def wake(self, _position: int | None = None) -> None:
        self._wake.set()

    def _loop(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self.catch_up()
                self.last_error = None
                backoff = 0.1
            except Exception as exc:  # supervise: log, back off, try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("projection runner failed; retrying in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            # Watchdog: even if no notification arrives, poll again after the interval.
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    # ------------------------------------------------------------------ views

    def positions(self) -> dict[str, int]:
        with self.db.snapshot() as tx:
            return {p.name: read_state(tx, p.name).position for p in self.projections}

    def lag(self) -> dict[str, int]:
        """Events recorded but not yet applied, per projection."""
        head = self.events.head()
        return {name: max(0, head - pos) for name, pos in self.positions().items()}

    def wait_for(self, position: int, timeout: float = 10.0) -> bool:
        """Block until every projection has applied ``position`` (read-your-writes)."""
        deadline = time.monotonic() + timeout
        while True:
            if min(self.positions().values()) >= position:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.wake()
            with self._progress:
                self._progress.wait(min(remaining, 0.05))
