"""A payments read-model row as plain JSON data, for doors that answer dicts."""

from __future__ import annotations

from typing import Any

import msgspec

from interfaces.presenters.payments import present_payment_row


def payment_row_json(row: Any) -> dict[str, Any]:
    """The same data as ``present_payment_row`` (the REST answer)."""
    data: dict[str, Any] = msgspec.to_builtins(present_payment_row(row))
    return data
