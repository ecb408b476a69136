"""The ledger's read models: balances, transaction history, guard-rail spending, daily usage."""

from __future__ import annotations

from collections.abc import Iterable

from projections.base import Insert, Op, Projection, Recorded, Upsert, to_micros
from projections.instances import InstancesProjection
from projections.payments import PaymentsProjection
from projections.proxy_load import ProxyLoadProjection
from projections.usage_sessions import UsageRentalsProjection, UsageSessionsProjection

ACCOUNT = "CreditAccount."
SPEND_EVENTS = {"CreditAccount.Charged", "CreditAccount.HoldCaptured"}

# event name -> (transaction kind, sign of the balance change)
TRANSACTION_KINDS = {
    "CreditAccount.Granted": "grant",
    "CreditAccount.Charged": "charge",
    "CreditAccount.HoldPlaced": "hold",
    "CreditAccount.HoldCaptured": "capture",
    "CreditAccount.HoldReleased": "release",
    "CreditAccount.HoldExpired": "expire",
    "CreditAccount.Debited": "debit",
    "CreditAccount.AutoRenewTriggered": "auto_renew",
}


def _account(event: Recorded) -> str:
    return str(event.originator_id)


class BalancesProjection:
    """One row per account: balance, outstanding holds, totals, cap."""

    name = "balances"
    tables = ("balances",)
    events: tuple[str, ...] | None = None

    def fold(self, event: Recorded) -> Iterable[Op]:
        if not event.name.startswith(ACCOUNT):
            return []
        amount = int(event.data.get("amount", 0))
        put: dict[str, object] = {"version": event.version, "updated_at": event.at_micros}
        add: dict[str, int] = {}
        kind = event.name[len(ACCOUNT) :]
        if kind == "Opened":
            put["user_id"] = event.data["user_id"]
        elif kind == "Granted":
            add = {"balance": amount, "total_granted": amount}
        elif kind == "Charged":
            add = {"balance": -amount, "total_charged": amount}
        elif kind == "HoldPlaced":
            add = {"held": amount}
        elif kind == "HoldCaptured":
            add = {"held": -amount, "balance": -amount, "total_charged": amount}
        elif kind in {"HoldReleased", "HoldExpired"}:
            add = {"held": -amount}
        elif kind == "Debited":
            add = {"balance": -amount, "total_debited": amount}
        elif kind == "CapSet":
            put["cap"] = int(event.data["cap"])
        elif kind == "AutoRenewConfigured":
            put["auto_renew_enabled"] = int(bool(event.data["enabled"]))
            put["auto_renew_threshold"] = int(event.data["threshold"])
            put["auto_renew_amount"] = int(event.data["amount"])
        return [Upsert("balances", {"account_id": _account(event)}, put, add)]


class TransactionsProjection:
    """Every money movement, one row per event, newest last."""

    name = "transactions"
    tables = ("transactions",)
    events: tuple[str, ...] | None = None

    def fold(self, event: Recorded) -> Iterable[Op]:
        kind = TRANSACTION_KINDS.get(event.name)
        if kind is None:
            return []
        data = event.data
        return [
            Insert(
                "transactions",
                {
                    "position": event.position,
                    "account_id": _account(event),
                    "version": event.version,
                    "kind": kind,
                    "amount": int(data.get("amount", 0)),
                    "hold_id": str(data.get("hold_id", "")),
                    "reason": str(data.get("reason", "")),
                    "reference": str(data.get("reference", "")),
                    "actor": str(data.get("actor", "")),
                    "at": event.at_micros,
                },
            )
        ]


class SpendingProjection:
    """Per-minute spend buckets, admin resets and per-user limits, for spending reports."""

    name = "spending"
    tables = ("spending_buckets", "spending_resets", "spending_limits")
    events: tuple[str, ...] | None = None

    def fold(self, event: Recorded) -> Iterable[Op]:
        if event.name in SPEND_EVENTS:
            return [
                Upsert(
                    "spending_buckets",
                    {"account_id": _account(event), "minute": event.minute},
                    add={"amount": int(event.data["amount"])},
                )
            ]
        if event.name == "CreditAccount.WindowsReset":
            return [
                Upsert(
                    "spending_resets",
                    {"account_id": _account(event), "window_name": window},
                    put={
                        "minute": int(event.data["minute"]),
                        "amount": int(event.data["bucket_amount"]),
                    },
                )
                for window in event.data["windows"]
            ]
        if event.name == "CreditAccount.LimitsSet":
            return [
                _limit(_account(event), window, limit)
                for window, limit in event.data["changes"].items()
            ]
        return []


class HoldsProjection:
    """One row per hold: when it expires and whether it is still live (for the hold sweep)."""

    name = "holds"
    tables = ("holds",)
    events = tuple(f"CreditAccount.Hold{kind}" for kind in ("Placed", "Released", "Expired"))

    def fold(self, event: Recorded) -> Iterable[Op]:
        if event.name == "CreditAccount.HoldPlaced":
            put = {"expires_at": to_micros(event.data["expires_at"]), "live": 1}
        elif event.name in {"CreditAccount.HoldReleased", "CreditAccount.HoldExpired"}:
            put = {"live": 0}
        else:
            return []
        key = {"account_id": _account(event), "hold_id": str(event.data["hold_id"])}
        return [Upsert("holds", key, put=put)]


def _limit(account_id: str, window: str, limit: int | None) -> Op:
    """A per-user override; ``None`` (back to the default) is stored as -1."""
    return Upsert(
        "spending_limits",
        {"account_id": account_id, "window_name": window},
        put={"amount": -1 if limit is None else int(limit)},
    )


class UsageProjection:
    """Per account and UTC day: spend, number of spends, grants, debits."""

    name = "usage"
    tables = ("usage_daily",)
    events: tuple[str, ...] | None = None

    def fold(self, event: Recorded) -> Iterable[Op]:
        amount = int(event.data.get("amount", 0))
        if event.name in SPEND_EVENTS:
            add = {"spent": amount, "spend_count": 1}
        elif event.name == "CreditAccount.Granted":
            add = {"granted": amount}
        elif event.name == "CreditAccount.Debited":
            add = {"debited": amount}
        else:
            return []
        return [Upsert("usage_daily", {"account_id": _account(event), "day": event.day}, add=add)]


ALL: tuple[Projection, ...] = (
    BalancesProjection(),
    TransactionsProjection(),
    SpendingProjection(),
    UsageProjection(),
    HoldsProjection(),
    InstancesProjection(),
    PaymentsProjection(),
    ProxyLoadProjection(),
    UsageSessionsProjection(),
    UsageRentalsProjection(),
)
BY_NAME: dict[str, Projection] = {p.name: p for p in ALL}
