"""What-if replay as the API and the admin CLI take and show it (options in, USD decimals out)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import msgspec

from domain import guardrails
from domain.errors import InvalidArgumentError
from domain.money import usd_to_micros
from domain.what_if import WhatIf
from interfaces.presenters.what_if import present_what_if

MAX_MARKUP_PERCENT = 1_000  # PRICE_MARKUP allows up to 10 (a fraction)


def parse_time(value: Any, field: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO datetime (naive is UTC)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(f"{field} must be a date (YYYY-MM-DD) or ISO time", field=field)
    try:
        if len(value.strip()) == 10:
            day = date.fromisoformat(value.strip())
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidArgumentError(f"{field} is not a date or ISO time", field=field) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def parse_markup(value: Any, field: str = "markup") -> int:
    """A percent ("10", "12.5") as parts per million of the provider's price."""
    micro_percent = usd_to_micros(value, field=field)
    if micro_percent % 100 or not 0 <= micro_percent <= MAX_MARKUP_PERCENT * 1_000_000:
        raise InvalidArgumentError(
            f"{field} must be a percent from 0 to {MAX_MARKUP_PERCENT} with at most 4 decimals",
            field=field,
        )
    return micro_percent // 100


def parse_usd(value: Any, field: str) -> int:
    """A non-negative USD amount ("0.001")."""
    micros = usd_to_micros(value, field=field)
    if micros < 0:
        raise InvalidArgumentError(f"{field} must not be negative", field=field)
    return micros


def parse_limits(value: Any, field: str = "limits") -> dict[str, int]:
    """``{"60min": "10.00"}`` or ``"60min=10.00,72h=100.00"``: USD per window (0 = off)."""
    if isinstance(value, str):
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise InvalidArgumentError(
                f"{field} must look like 60min=10.00,72h=100.00", field=field
            )
        value = dict(pairs)
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{field} must map windows to USD limits", field=field)
    limits: dict[str, int] = {}
    for name, amount in value.items():
        try:
            window = guardrails.normalise_window(str(name))
        except ValueError as exc:
            raise InvalidArgumentError(str(exc), field=field) from None
        limits[window] = parse_usd(amount, f"{field}.{name}")
    return limits


def what_if_json(user_id: str, result: WhatIf) -> dict[str, Any]:
    """The replay as plain data (the admin CLI): the same as ``present_what_if``."""
    data: dict[str, Any] = msgspec.to_builtins(present_what_if(user_id, result))
    return data
