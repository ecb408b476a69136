"""A monthly statement as the API and the admin CLI show it (USD decimals)."""

from __future__ import annotations

from typing import Any

from domain.money import micros_to_usd
from domain.statements import statement


def statement_json(user_id: str, month: str, history: list[Any]) -> dict[str, Any]:
    result = statement(month, history)
    return {
        "user_id": user_id,
        "month": month,
        "currency": "USD",
        "opening_balance": micros_to_usd(result.opening),
        "payments": micros_to_usd(result.payments),
        "grants": micros_to_usd(result.grants),
        "charges": micros_to_usd(result.charges),
        "charges_by_instance": {
            k: micros_to_usd(v) for k, v in result.charges_by_reference.items()
        },
        "refunds": micros_to_usd(result.refunds),
        "adjustments": micros_to_usd(result.adjustments),
        "closing_balance": micros_to_usd(result.closing),
        "reconciles": result.reconciles,
        "opening_hash": result.opening_hash,
        "closing_hash": result.closing_hash,
    }
