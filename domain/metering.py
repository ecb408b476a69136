"""The money decisions of metering a GPU rental, as pure functions.

``MarketplaceService.meter`` (and destroy, failure) runs them on the owner's account and the
instance in one transaction: capture what is due from the hold (any excess is charged
directly), renew the hold when less than ``renew_below_seconds`` of running is left on it,
and when a renewal is refused block spend or stop, as ``GUARDRAILS_ACTION`` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from domain.holds import Hold

SECONDS_PER_HOUR = 3600


def hold_amount(price_per_hour: int, hold_seconds: int) -> int:
    """A hold covering ``hold_seconds`` of running at ``price_per_hour``: rounded up, >= 1."""
    return max(1, -(-price_per_hour * hold_seconds // SECONDS_PER_HOUR))


def hold_expiry(now: datetime, hold_seconds: int) -> datetime:
    """A rental's hold outlives the time it covers twice over (metering may run late)."""
    return now + timedelta(seconds=hold_seconds * 2)


@dataclass(frozen=True, slots=True)
class Due:
    """What one metering step bills: ``from_hold`` captured, ``extra`` charged beyond it."""

    from_hold: int
    extra: int

    @property
    def total(self) -> int:
        return self.from_hold + self.extra


def split_due(owed: int, billed: int, hold: Hold | None, now: datetime) -> Due | None:
    """Bill ``owed`` (all running so far) less ``billed``: from the hold while it is live and
    has something left, the rest directly. None when nothing new is due."""
    delta = owed - billed
    if delta <= 0:
        return None
    from_hold = min(delta, 0 if hold is None else hold.capturable_at(now))
    return Due(from_hold, delta - from_hold)


def renewal_due(hold: Hold | None, price_per_hour: int, renew_below_seconds: int) -> bool:
    """True when what is left of the hold pays for less than ``renew_below_seconds``."""
    left = 0 if hold is None else hold.remaining
    return left * SECONDS_PER_HOUR < price_per_hour * renew_below_seconds


def blocks_spend(guardrails_action: str) -> bool:
    """With no funds for a new hold, ``block`` lets the rental run on, marked spend-blocked."""
    return guardrails_action == "block"


def stops_unfunded(guardrails_action: str) -> bool:
    """With no funds for a new hold, ``stop`` (the default) stops the rental."""
    return guardrails_action == "stop"
