"""Admin answers: users with credits, grants, limits, resets, caps, ledger statistics."""

from __future__ import annotations

from msgspec import Struct, structs

from interfaces.presenters.auth import User
from interfaces.presenters.credits import Credits
from interfaces.presenters.instances import Instance
from interfaces.presenters.payments import PaymentRow


class UserList(Struct):
    users: list[User]


class UserAnswer(Struct):
    user: User


class UserWithCredits(Struct):
    user: User
    credits: Credits


class Grant(Struct):
    """``applied`` is false for a retry with the same Idempotency-Key (granted once)."""

    applied: bool
    amount: str
    credits_remaining: str


class Limits(Struct):
    """The guard-rail limits in force, per window, in USD."""

    limits: dict[str, str]


class Reset(Struct):
    """``windows`` is the list reset, or ``"all"``."""

    message: str
    windows: list[str] | str


class Cap(Struct):
    credits_cap: str


class Stats(Struct):
    users: int
    events: int
    accounts: int
    balance_total: str
    held_total: str
    granted_total: str
    charged_total: str
    transactions: int
    projection_lag: dict[str, int]


class KeyRevoked(Struct):
    message: str
    key_id: str


class KeysRevoked(Struct):
    revoked: list[str]
    count: int


class BalancePoint(Struct):
    id: int
    at: str | None
    balance: str


class BalanceHistory(Struct):
    """Balance after each movement, oldest first."""

    points: list[BalancePoint]


class LedgerRow(Struct):
    """One ledger movement as operators see it (with the actor)."""

    id: int
    kind: str
    amount: str
    hold_id: str | None
    reason: str
    reference: str
    actor: str
    at: str | None


class LedgerPage(Struct):
    transactions: list[LedgerRow]
    next_before: int | None


class OwnedInstance(Instance, kw_only=True):
    """An instance with whose it is."""

    owner: str
    owner_email: str | None


class InstanceList(Struct):
    instances: list[OwnedInstance]
    count: int


class OwnedPayment(PaymentRow, kw_only=True):
    """A payment with whose it is."""

    owner: str
    owner_email: str | None


class AllPayments(Struct):
    payments: list[OwnedPayment]
    count: int


class SecurityEvent(Struct):
    at: str
    actor: str
    action: str
    detail: str


class LedgerChange(Struct):
    """A ledger event an actor caused (grant, limits, reset, cap…)."""

    version: int
    event: str
    at: str
    actor: str
    reason: str


class Audit(Struct):
    security: list[SecurityEvent]
    ledger: list[LedgerChange]


def owned_instance(shown: Instance, owner: str, email: str | None) -> OwnedInstance:
    return OwnedInstance(**structs.asdict(shown), owner=owner, owner_email=email)


def owned_payment(shown: PaymentRow, owner: str, email: str | None) -> OwnedPayment:
    return OwnedPayment(**structs.asdict(shown), owner=owner, owner_email=email)
