"""What-if replay of one account: its events read from the event store, replayed in memory."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from domain.errors import AccountNotFoundError, InvalidArgumentError
from domain.instances import GpuInstance
from domain.services.ledger import LedgerService
from domain.what_if import GpuPrice, Rules, WhatIf, what_if

GPU_RENTAL = "GPU rental"  # the reason a rental's hold is placed with (its reference: the id)


def account_what_if(
    ledger: LedgerService,
    user_id: str,
    start: datetime,
    end: datetime,
    rules: Rules,
    max_events: int | None = None,
) -> WhatIf:
    """``domain.what_if.what_if`` over the account's recorded events up to ``end`` (none: an
    empty period); more than ``max_events`` of them is refused (field ``from``). With
    ``rules.gpu_prices`` the rentals' recorded prices are read from their GpuInstance events."""
    try:
        history = ledger.history(user_id, until=end)
    except AccountNotFoundError:
        history = []
    if max_events is not None and len(history) > max_events:
        raise InvalidArgumentError(
            f"the history to replay has more than {max_events} events", field="from"
        )
    gpus = _rentals(ledger, history) if rules.gpu_prices else {}
    return what_if(history, start, end, rules, gpus)


def _rentals(ledger: LedgerService, history: Sequence[Any]) -> dict[str, GpuPrice]:
    """Recorded price of each rental the account held funds for, by hold id and instance id."""
    found: dict[str, GpuPrice] = {}
    for entry in history:
        if entry.name != "HoldPlaced" or entry.data.get("reason") != GPU_RENTAL:
            continue
        try:
            gpu: GpuInstance = ledger.app.repository.get(UUID(entry.data["reference"]))
        except (ValueError, KeyError, AggregateNotFoundError):
            continue
        price = GpuPrice(gpu.gpu_model, gpu.num_gpus, gpu.price_per_hour)
        found[entry.data["hold_id"]] = found[str(gpu.id)] = price
    return found
