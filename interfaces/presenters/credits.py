"""The credit balance (``GET /api/v1/billing/credits`` and every door that answers it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
from msgspec import Struct

from domain.money import micros_to_usd


class AutoRenew(Struct):
    """Buy credits when the available balance falls under ``threshold``."""

    enabled: bool
    threshold: str
    amount: str


class Credits(Struct):
    """A balance in USD: ``available`` is ``remaining`` less what holds keep back."""

    credits_remaining: str
    credits_available: str
    credits_held: str
    credits_total: str
    credits_spent: str
    credits_overage: str
    credits_cap: str
    credits_auto_renew: AutoRenew
    currency: str = "USD"


def present_credits(row: Mapping[str, int] | None) -> Credits:
    """The balance read model's row (``LedgerQueries.balance``); none is an empty account."""
    row = row or {}
    balance, held = row.get("balance", 0), row.get("held", 0)
    return Credits(
        credits_remaining=micros_to_usd(balance),
        credits_available=micros_to_usd(balance - held),
        credits_held=micros_to_usd(held),
        credits_total=micros_to_usd(row.get("total_granted", 0)),
        credits_spent=micros_to_usd(row.get("total_charged", 0)),
        credits_overage=micros_to_usd(max(0, -balance)),
        credits_cap=micros_to_usd(row.get("cap", 0)),
        credits_auto_renew=AutoRenew(
            enabled=bool(row.get("auto_renew_enabled", 0)),
            threshold=micros_to_usd(row.get("auto_renew_threshold", 0)),
            amount=micros_to_usd(row.get("auto_renew_amount", 0)),
        ),
    )


def credits_json(row: dict[str, int] | None) -> dict[str, Any]:
    """The balance as plain data (the fast lane, agents): the same as ``present_credits``."""
    data: dict[str, Any] = msgspec.to_builtins(present_credits(row))
    return data
