"""A payments read-model row as the API lists it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.money import micros_to_usd


def payment_row_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.payment_id,
        "status": row.state,
        "amount": micros_to_usd(row.amount),
        "currency": row.currency,
        "provider": row.processor,
        "payment_method": row.method,
        "credited": micros_to_usd(row.credited),
        "refunded": micros_to_usd(row.refunded),
        "failure": row.failure or None,
        "created_at": datetime.fromtimestamp(row.created_at / 1e6, UTC).isoformat(),
    }
