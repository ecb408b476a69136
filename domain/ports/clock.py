"""Ports: the small interfaces the domain needs from the outside world."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Tells the current time (aware, UTC). Injected so tests and replays control time."""

    def __call__(self) -> datetime: ...


def system_clock() -> datetime:
    """The real clock."""
    return datetime.now(UTC)
