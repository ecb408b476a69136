"""What-if replay: an account's recorded history under other rules, in memory.

The recorded CreditAccount events (oldest first) are replayed through a fresh
``CreditAccount`` that is never saved, so the guard-rail windows, funds and auto-renew rules
are the aggregate's own. Before ``start`` the history is replayed as recorded (no window or
funds check) to reach the real opening state; from ``start`` to ``end`` each charge and hold
capture is re-decided as a charge under the given rules (a refused one is reported, not
billed); grants, debits and the account's own settings are replayed as recorded, except the
account's limits when ``Rules.limits`` replaces them. Auto-renew firings are the replay's
own ``AutoRenewTriggered`` events. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from domain.credits import CreditAccount
from domain.errors import InsufficientCreditsError, InvalidArgumentError, SpendingLimitExceededError
from domain.guardrails import GuardrailPolicy
from domain.money import MAX_MICROS
from domain.statements import AccountEvent

MAX_RANGE = timedelta(days=93)
PPM = 1_000_000
SPEND = frozenset({"Charged", "HoldCaptured"})
GPU_TIME, PROXY_REQUESTS = "GPU time", "proxy requests"  # the reasons spend is recorded with


@dataclass(frozen=True)
class Rules:
    """The rules to replay under. ``limits``: the account's own limits (micro-USD per window,
    0 = off) instead of those it recorded; ``markup_ppm``: the GPU price markup instead of
    ``recorded_markup_ppm`` (spend for "GPU time" is re-priced ``amount * (1 + new) / (1 +
    recorded)``); ``proxy_price``: the per-request fee instead of ``recorded_proxy_price``
    (spend for "proxy requests" is re-priced ``amount * new / recorded``); ``gpu_prices``: a
    provider price per GPU-hour by GPU model, marked up like a new rental (``GpuPrice``).
    Amounts are floored."""

    policy: GuardrailPolicy = field(default_factory=GuardrailPolicy)
    limits: Mapping[str, int] | None = None
    markup_ppm: int | None = None
    recorded_markup_ppm: int = 0
    proxy_price: int | None = None
    recorded_proxy_price: int = 0
    gpu_prices: Mapping[str, int] | None = None


@dataclass(frozen=True)
class GpuPrice:
    """What a rental was recorded at: its model, GPUs and our price per hour (micro-USD)."""

    model: str
    num_gpus: int
    price_per_hour: int


@dataclass(frozen=True)
class Refusal:
    at: datetime
    amount: int
    reason: str  # "limit" or "funds"
    windows: tuple[str, ...] = ()


@dataclass
class Outcome:
    """One run of the period: what was billed, refused, the lowest balance, auto-renews."""

    opening: int = 0
    bill: int = 0
    closing: int = 0
    lowest_balance: int = 0
    lowest_at: datetime | None = None
    refused: list[Refusal] = field(default_factory=list)
    auto_renew_at: list[datetime] = field(default_factory=list)

    def _balance(self, balance: int, at: datetime) -> None:
        self.closing = balance
        if self.lowest_at is None or balance < self.lowest_balance:
            self.lowest_balance, self.lowest_at = balance, at


@dataclass(frozen=True)
class WhatIf:
    start: datetime
    end: datetime
    real: Outcome
    replay: Outcome


def check_range(start: datetime, end: datetime, longest: timedelta = MAX_RANGE) -> None:
    """Refuse an empty, reversed or too long period (field ``to``)."""
    if end <= start:
        raise InvalidArgumentError("to must be after from", field="to")
    if end - start > longest:
        raise InvalidArgumentError(f"the period is at most {longest.days} days", field="to")


def what_if(
    events: Iterable[AccountEvent],
    start: datetime,
    end: datetime,
    rules: Rules,
    gpus: Mapping[str, GpuPrice] | None = None,
) -> WhatIf:
    """The period ``[start, end)`` as recorded and as replayed under ``rules``; ``gpus``: the
    rentals' recorded prices by hold id and instance id (for ``Rules.gpu_prices``)."""
    check_range(start, end, timedelta.max)
    history = list(events)
    replayed = _replayed(history, start, end, _Replay(rules, gpus or {}))
    return WhatIf(start, end, _recorded(history, start, end), replayed)


def _recorded(events: list[AccountEvent], start: datetime, end: datetime) -> Outcome:
    result = Outcome()
    balance, opened = 0, False
    for event in events:
        if event.at >= end:
            break
        if not opened and event.at >= start:
            result.opening, opened = balance, True
            result._balance(balance, start)
        amount = int(event.data.get("amount", 0))
        if event.name == "Granted":
            balance += amount
        elif event.name in SPEND or event.name == "Debited":
            balance -= amount
            if event.name in SPEND and event.at >= start:
                result.bill += amount
        elif event.name == "AutoRenewTriggered" and event.at >= start:
            result.auto_renew_at.append(event.at)
        if event.at >= start:
            result._balance(balance, event.at)
    if not opened:
        result.opening = balance
        result._balance(balance, start)
    result.closing = balance
    return result


class _Replay:
    """A fresh in-memory CreditAccount fed the recorded events."""

    def __init__(self, rules: Rules, gpus: Mapping[str, GpuPrice]) -> None:
        self.rules = rules
        self.gpus = gpus
        self.account: CreditAccount | None = None
        self.cap = 0
        self.limits: dict[str, int | None] = {}
        self.count = 0
        self.deciding = False

    def key(self) -> str:
        self.count += 1
        return f"what-if-{self.count}"

    def open(self, at: datetime) -> CreditAccount:
        if self.account is None:
            self.account = CreditAccount(user_id="what-if", at=at)
            self.account.set_cap(MAX_MICROS, now=at, actor="what-if")
        return self.account

    def begin(self, at: datetime) -> CreditAccount:
        """From here on the rules decide: the real cap, the limits in force."""
        account = self.open(at)
        self.deciding = True
        account.set_cap(self.cap, now=at, actor="what-if")
        limits = self.limits if self.rules.limits is None else dict(self.rules.limits)
        changes: dict[str, int | None] = dict.fromkeys(account.limits)
        changes.update(limits)
        if changes:
            account.set_limits(changes, now=at, actor="what-if")
        return account

    def apply(self, name: str, at: datetime, data: Mapping[str, Any], result: Outcome) -> None:
        account = self.open(at)
        amount = int(data.get("amount", 0))
        if name == "Granted":
            account.grant(amount, key=self.key(), now=at, source=data.get("source", "admin"))
        elif name in SPEND:
            self._spend(account, self._priced(data, amount), at, result)
        elif name == "Debited":
            try:
                account.debit(amount, key=self.key(), now=at, kind=data.get("kind", "refund"))
            except InsufficientCreditsError:
                result.refused.append(Refusal(at, amount, "funds"))
        elif name == "CapSet":
            self.cap = int(data["cap"])
            if self.deciding:
                account.set_cap(self.cap, now=at, actor="what-if")
        elif name == "AutoRenewConfigured":
            account.configure_auto_renew(
                enabled=bool(data["enabled"]),
                threshold=int(data["threshold"]),
                amount=int(data["amount"]),
                payment_method=str(data["payment_method"]),
                now=at,
                actor="what-if",
            )
        elif name == "LimitsSet" and self.rules.limits is None:
            self.limits.update(data["changes"])
            if self.deciding:
                account.set_limits(dict(data["changes"]), now=at, actor="what-if")
        elif name == "WindowsReset":
            account.reset_windows(list(data["windows"]), now=at, actor="what-if", reason="replay")
        self._collect(account, result)

    def _priced(self, data: Mapping[str, Any], amount: int) -> int:
        rules, reason = self.rules, data.get("reason", "")
        if not self.deciding:
            return amount
        gpu = self.gpus.get(str(data.get("hold_id") or data.get("reference") or ""))
        if reason == GPU_TIME and gpu and rules.gpu_prices and gpu.model in rules.gpu_prices:
            markup = rules.recorded_markup_ppm if rules.markup_ppm is None else rules.markup_ppm
            hourly = -(-rules.gpu_prices[gpu.model] * gpu.num_gpus * (PPM + markup) // PPM)
            return amount * hourly // gpu.price_per_hour if gpu.price_per_hour else amount
        if reason == GPU_TIME and rules.markup_ppm is not None:
            return amount * (PPM + rules.markup_ppm) // (PPM + rules.recorded_markup_ppm)
        if (
            reason == PROXY_REQUESTS
            and rules.proxy_price is not None
            and rules.recorded_proxy_price
        ):
            return amount * rules.proxy_price // rules.recorded_proxy_price
        return amount

    def _spend(self, account: CreditAccount, amount: int, at: datetime, result: Outcome) -> None:
        if amount <= 0:
            return
        if not self.deciding:
            account.charge(amount, key=self.key(), now=at, policy=GuardrailPolicy())
            return
        try:
            account.charge(amount, key=self.key(), now=at, policy=self.rules.policy)
        except SpendingLimitExceededError as exc:
            windows = tuple(str(v["window"]) for v in exc.violations)
            result.refused.append(Refusal(at, amount, "limit", windows))
            return
        except InsufficientCreditsError:
            result.refused.append(Refusal(at, amount, "funds"))
            return
        result.bill += amount

    def _collect(self, account: CreditAccount, result: Outcome) -> None:
        for pending in account.collect_events():
            if type(pending).__name__ == "AutoRenewTriggered" and self.deciding:
                result.auto_renew_at.append(pending.at)  # type: ignore[attr-defined]


def _replayed(
    events: list[AccountEvent], start: datetime, end: datetime, replay: _Replay
) -> Outcome:
    result = Outcome()
    for event in events:
        if event.at >= end:
            break
        if not replay.deciding and event.at >= start:
            _begin(replay, start, result)
        replay.apply(event.name, event.at, event.data, result)
        if replay.deciding and replay.account is not None:
            result._balance(replay.account.balance, event.at)
    if not replay.deciding:
        _begin(replay, start, result)
    result.closing = replay.account.balance if replay.account is not None else 0
    return result


def _begin(replay: _Replay, start: datetime, result: Outcome) -> None:
    account = replay.begin(start)
    replay._collect(account, result)
    result.opening = account.balance
    result._balance(result.opening, start)
