"""Reads the application's notification log as ``Recorded`` events, decoded fast.

Projections read raw stored events and decode their JSON with msgspec instead of building
domain event objects through the library's mapper: a rebuild reads millions of events, and
this keeps the read path close to the raw ``SELECT`` rate (docs/adr/0004).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import Application

from projections.base import Recorded

_decoder = msgspec.json.Decoder()


def _plain(value: Any) -> Any:
    if isinstance(value, dict) and "_type_" in value and "_data_" in value:
        return value["_data_"]
    return value


class EventLog:
    """Paged access to one application's notification log."""

    def __init__(self, app: Application[UUID]) -> None:
        self.app = app
        self.recorder: Any = app.recorder
        self._cipher = app.mapper.cipher
        self._compressor = app.mapper.compressor

    def head(self) -> int:
        """The highest notification id recorded so far (0 if none)."""
        return int(self.recorder.max_notification_id() or 0)

    def read(self, after: int, limit: int, stop: int | None = None) -> list[Recorded]:
        """Up to ``limit`` events with ``after < position <= stop``, oldest first."""
        notifications = self.recorder.select_notifications(
            start=after, limit=limit, stop=stop, inclusive_of_start=False
        )
        return self.decode(notifications)

    def decode(self, notifications: Sequence[Any]) -> list[Recorded]:
        out = []
        for n in notifications:
            state = n.state
            if self._cipher is not None:
                state = self._cipher.decrypt(state)
            if self._compressor is not None:
                state = self._compressor.decompress(state)
            data = {k: _plain(v) for k, v in _decoder.decode(state).items()}
            topic: str = n.topic
            out.append(
                Recorded(
                    position=n.id,
                    originator_id=n.originator_id
                    if isinstance(n.originator_id, UUID)
                    else UUID(str(n.originator_id)),
                    version=n.originator_version,
                    name=topic.rpartition(":")[2],
                    data=data,
                )
            )
        return out
