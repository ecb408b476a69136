"""Ports: the small interfaces the domain needs from the outside world.

A port is only its Protocol; the clocks that implement it live in ``domain.clocks``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Clock(Protocol):
    """Tells the current time (aware, UTC). Injected so tests and replays control time."""

    def __call__(self) -> datetime: ...
