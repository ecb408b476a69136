"""The system clock, and a guard on it.

``system_clock`` is the standard library's ``datetime.now(UTC)`` itself (a ``partial``: no
frame of ours per reading; business time is read on every command and proxied request).

Clock guard: a writer's clock is never taken further ahead of a reference than allowed.

Business time must not come from one wild clock: a replica whose clock runs far ahead would
record events in the future, prune spend and keys too early and expire other replicas'
holds (docs/consistency.md). ``BoundedClock`` clamps such a clock to the reference plus a
tolerance and logs that it did; a clock behind is left alone (each aggregate's own time is
monotonic, so a late clock acts at the aggregate's newest event instead).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from functools import partial

from domain.ports.clock import Clock

log = logging.getLogger(__name__)
WARN_EVERY = 60.0  # seconds between two warnings about the same clock

system_clock: Clock = partial(datetime.now, UTC)
"""The real clock: the current time, aware, in UTC."""


class BoundedClock:
    """``clock``, but never later than ``reference() + max_ahead``."""

    def __init__(self, clock: Clock, reference: Clock, max_ahead: timedelta) -> None:
        if max_ahead < timedelta(0):
            raise ValueError("max_ahead must not be negative")
        self.clock = clock
        self.reference = reference
        self.max_ahead = max_ahead
        self.clamped = 0  # how many readings were clamped
        self._warned = -WARN_EVERY

    def __call__(self) -> datetime:
        now = self.clock()
        limit = self.reference() + self.max_ahead
        if now <= limit:
            return now
        self.clamped += 1
        if time.monotonic() - self._warned >= WARN_EVERY:
            self._warned = time.monotonic()
            log.warning(
                "this clock is %.1f s ahead of the reference clock (tolerance %.1f s): "
                "business time is clamped to the reference plus the tolerance",
                (now - limit + self.max_ahead).total_seconds(),
                self.max_ahead.total_seconds(),
            )
        return limit
