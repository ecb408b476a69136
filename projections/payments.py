"""Read model of payments (one row each) and of auto-renew triggers awaiting a payment."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from projections.base import Op, Recorded, Upsert, to_micros

PREFIX = "Payment."


def method_label(method: dict[str, Any]) -> str:
    """A short, card-safe description: "card visa 4242", "crypto ethereum 0xab…"."""
    kind = str(method.get("type", ""))
    if kind == "card":
        details = " ".join(str(method[k]) for k in ("brand", "last4") if method.get(k))
        return f"card {details}".strip()
    if kind == "crypto":
        return f"crypto {method.get('network', '')} {method.get('wallet', '')}".strip()
    return kind


class PaymentsProjection:
    name = "payments"
    tables = ("payments", "auto_renew_requests")
    events = (PREFIX + "%", "CreditAccount.AutoRenewTriggered")

    def fold(self, event: Recorded) -> Iterable[Op]:
        if event.name == "CreditAccount.AutoRenewTriggered":
            return [_auto_renew(event)]
        if not event.name.startswith(PREFIX):
            return []
        kind, data, at = event.name[len(PREFIX) :], event.data, event.at_micros
        put: dict[str, object] = {"updated_at": at}
        add: dict[str, int] = {}
        if kind == "Initiated":
            put.update(_initiated(data, at))
        elif kind == "Pending":
            put.update(state="pending", external_id=data["external_id"])
        elif kind == "Succeeded":
            put.update(state="succeeded", external_id=data["external_id"], failure="")
            if data.get("brand") or data.get("last4"):
                put["method"] = f"card {data.get('brand', '')} {data.get('last4', '')}".strip()
            add["credited"] = int(data["credited"])
        elif kind == "Failed":
            put.update(state="failed", failure=data["reason"], external_id=data["external_id"])
        elif kind == "Expired":
            put.update(state="expired")
        elif kind == "Reversed":
            column = "refunded" if data["kind"] == "refund" else "disputed"
            add[column] = int(data["amount"])
            put["state"] = data["state"]
        elif kind == "TransferSeen":
            _transfer(data, put, add)
        else:
            return []
        return [Upsert("payments", {"payment_id": str(event.originator_id)}, put=put, add=add)]


def _auto_renew(event: Recorded) -> Upsert:
    return Upsert(
        "auto_renew_requests",
        {"account_id": str(event.originator_id), "version": event.version},
        put={
            "amount": int(event.data["amount"]),
            "payment_method": str(event.data["payment_method"]),
            "at": event.at_micros,
        },
    )


def _initiated(data: dict[str, Any], at: int) -> dict[str, object]:
    method = data["method"]
    return {
        "owner": data["owner"],
        "idem_key": data["key"],
        "amount": int(data["amount"]),
        "currency": data["currency"],
        "processor": data["processor"],
        "method": method_label(method),
        "wallet": str(method.get("wallet", "")).lower(),
        "source": data.get("source", "user"),
        "state": "initiated",
        "created_at": at,
        "expires_at": to_micros(data["expires_at"]) if data.get("expires_at") else 0,
    }


def _transfer(data: dict[str, Any], put: dict[str, object], add: dict[str, int]) -> None:
    add["received"] = int(data["amount"])
    if data["kind"] == "extra":
        add["credited"] = int(data["amount"])
    if data["kind"] not in {"exact", "duplicate"}:
        put["flags"] = data["kind"]
