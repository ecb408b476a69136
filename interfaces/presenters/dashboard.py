"""Admin dashboard views (``/api/v1/admin/…``): user search, an account now, every user's
reservations, the load table, marketplace health and projection progress.

Money is 6-decimal USD strings, times ISO 8601; ``interfaces/web/static/app.js`` reads these
shapes.
"""

from __future__ import annotations

from msgspec import Struct, structs

from domain.money import micros_to_usd
from domain.services.ledger import AccountView
from interfaces.presenters.auth import User
from interfaces.presenters.credits import AutoRenew
from interfaces.presenters.instances import Reservation
from interfaces.presenters.spending import Spending


class FoundUser(User, kw_only=True):
    """A user with the balance read model's figures (zero for an account never opened)."""

    credits_remaining: str
    credits_held: str


class UserSearch(Struct):
    users: list[FoundUser]


class AccountCredits(Struct):
    """An account's balance as the aggregate holds it now, at event ``version``."""

    credits_remaining: str
    credits_available: str
    credits_held: str
    credits_total: str
    credits_overage: str
    credits_cap: str
    version: int


class Hold(Struct):
    hold_id: str
    amount: str
    captured: str
    expires_at: str


class AdminAccount(Struct, kw_only=True, omit_defaults=True):
    """A user and their account now. ``credits`` and ``spending`` are null, and the other
    members absent, for a user whose account was never opened."""

    user: User
    credits: AccountCredits | None
    spending: Spending | None
    limit_overrides: dict[str, str] | None = None
    holds: list[Hold] | None = None
    auto_renew: AutoRenew | None = None
    as_of: str | None = None


class OwnedReservation(Reservation, kw_only=True):
    """A reservation with whose it is."""

    owner: str


class ReservationList(Struct):
    reservations: list[OwnedReservation]
    count: int


class LoadRow(Struct):
    """One instance's traffic: totals from the ``proxy_load`` read model, ``active_connections``
    and ``ejected`` from this process's balancer."""

    instance_id: str
    owner: str
    owner_email: str | None
    provider: str
    state: str | None
    requests: int
    errors: int
    mean_latency_ms: float | None
    last_at: str | None
    active_connections: int
    ejected: bool


class LoadTable(Struct):
    instances: list[LoadRow]
    count: int


class ProviderHealth(Struct, kw_only=True, omit_defaults=True):
    """A live probe (one offer search): ``offers_seen`` when it answered, ``error`` when not;
    ``instances`` counts this provider's instances per state."""

    name: str
    healthy: bool
    error: str | None = None
    offers_seen: int | None = None
    latency_ms: float
    instances: dict[str, int]


class ProviderList(Struct):
    providers: list[ProviderHealth]


class Streams(Struct):
    """The WebSocket event feed's position and open connections in this process."""

    cursor: int
    connections: int


class Projections(Struct):
    """The event store's head, each projection's position and lag, the last error."""

    head: int
    positions: dict[str, int]
    lag: dict[str, int]
    last_error: str | None
    streams: Streams


def present_account_credits(view: AccountView) -> AccountCredits:
    return AccountCredits(
        credits_remaining=micros_to_usd(view.balance),
        credits_available=micros_to_usd(view.available),
        credits_held=micros_to_usd(view.held),
        credits_total=micros_to_usd(view.total_granted),
        credits_overage=micros_to_usd(view.overage),
        credits_cap=micros_to_usd(view.cap),
        version=view.version,
    )


def owned_reservation(shown: Reservation, owner: str) -> OwnedReservation:
    return OwnedReservation(**structs.asdict(shown), owner=owner)
