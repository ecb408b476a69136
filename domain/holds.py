"""Credit holds as values, and the ids of the holds a GPU rental places.

``CreditAccount`` keeps its holds as plain dicts (that is the stored snapshot shape); it hands
them out as the frozen ``Hold`` below, so no caller does arithmetic on the dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Hold:
    """Funds reserved on an account until ``expires_at``; ``captured`` of them already spent."""

    hold_id: str
    amount: int
    captured: int
    expires_at: datetime

    @classmethod
    def from_state(cls, hold_id: str, state: Mapping[str, Any]) -> Hold:
        """The value of one entry of ``CreditAccount.holds`` (the stored dict)."""
        return cls(hold_id, state["amount"], state["captured"], state["expires_at"])

    @property
    def remaining(self) -> int:
        """What can still be captured (or is freed on release or expiry)."""
        return self.amount - self.captured

    def live_at(self, now: datetime) -> bool:
        """True while the hold has not reached its expiry."""
        return self.expires_at > now

    def capturable_at(self, now: datetime) -> int:
        """``remaining`` while live, 0 once past expiry (an expired hold captures nothing)."""
        return self.remaining if self.live_at(now) else 0


def _rental_prefix(instance_id: UUID) -> str:
    return f"gpu:{instance_id}:"


def rental_hold_id(instance_id: UUID, number: int = 1) -> str:
    """The id of a rental's own ``number``-th hold (each renewal places the next)."""
    return f"{_rental_prefix(instance_id)}{number}"


def is_rental_hold(instance_id: UUID, hold_id: str) -> bool:
    """True if ``hold_id`` is one of this rental's own holds (not a reservation's shared one)."""
    return hold_id.startswith(_rental_prefix(instance_id))


def next_rental_hold_id(instance_id: UUID, current: str) -> str:
    """The hold a rental renews into: the one after its own ``current`` hold, or its first
    own hold when ``current`` is not its own (a reservation's shared hold)."""
    prefix = _rental_prefix(instance_id)
    if not current.startswith(prefix):
        return rental_hold_id(instance_id)
    return rental_hold_id(instance_id, int(current[len(prefix) :]) + 1)
