"""Who owns an event: the user a stream belongs to, for filtering live streams per user.

The first event of every owned stream names its owner (``CreditAccount.Opened.user_id``,
``GpuInstance.Requested.owner``, ``Reservation.Requested.owner``, ``Payment.Initiated.owner``);
later events are matched through a bounded cache, and on a miss the stream's first event is
read from the event store. ``ProxyUsage`` rows carry their own owners (one event, many users).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any
from uuid import UUID

from projections.base import Recorded

OWNER_FIELDS = ("owner", "user_id")


class OwnerIndex:
    """Maps stream ids to owners; thread-safe (called from worker threads)."""

    def __init__(self, app: Any, size: int = 200_000) -> None:
        self.app = app
        self.size = size
        self._owners: OrderedDict[UUID, str] = OrderedDict()
        self._lock = threading.Lock()

    def owner_of(self, event: Recorded) -> str | None:
        """The user who owns the event's stream, or None (system streams, usage flushes)."""
        for name in OWNER_FIELDS:
            value = event.data.get(name)
            if isinstance(value, str) and value:
                self._remember(event.originator_id, value)
                return value
        if event.version == 1:
            return None
        with self._lock:
            known = self._owners.get(event.originator_id)
            if known is not None:
                self._owners.move_to_end(event.originator_id)
                return known
        found = self._first_owner(event.originator_id)
        if found:
            self._remember(event.originator_id, found)
        return found

    def _first_owner(self, stream: UUID) -> str | None:
        stored = self.app.recorder.select_events(stream, lte=1, limit=1)
        if not stored:
            return None
        first = self.app.mapper.to_domain_event(stored[0])
        for name in OWNER_FIELDS:
            value = getattr(first, name, None)
            if isinstance(value, str) and value:
                return value
        return None

    def _remember(self, stream: UUID, owner: str) -> None:
        with self._lock:
            self._owners[stream] = owner
            self._owners.move_to_end(stream)
            while len(self._owners) > self.size:
                self._owners.popitem(last=False)
