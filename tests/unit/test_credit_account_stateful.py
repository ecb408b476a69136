"""CreditAccount as a state machine, checked against a plain-integer model.

Hypothesis drives random sequences of commands (grants, charges, holds, captures, releases,
debits, cap and limit changes, window resets, idempotent repeats, key conflicts and clock
moves) through one in-memory aggregate. The model predicts every outcome (applied, or
refused with which error); after every step the aggregate must agree with the model, keep
its invariants, and equal an aggregate rebuilt by replaying every event it emitted.

A refused command must leave the aggregate as it was, except that commands which expire
due holds first (``_expire_due``) may have done so: those ``HoldExpired`` events are
legitimate and are kept (the group committer saves them even when the command is refused).

Commands come from writers whose clocks differ (issue 17): the true clock, one 2 min ahead
or behind, one 10 min behind (an NTP step back) and one 100 h ahead, the last held to the
true clock plus ``MAX_AHEAD`` by the ``BoundedClock`` every service clock goes through. The
model runs each command at its business time, ``max(writer clock, newest event)``; windows
(resets included) must then count exactly what the model counts, and no key or spend
bucket is forgotten because one writer's clock was wild.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from eventsourcing.domain import DomainEvent
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from domain.clocks import BoundedClock
from domain.credits import MAX_TEXT, CreditAccount
from domain.errors import (
    DomainError,
    HoldConflictError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidAmountError,
    InvalidArgumentError,
    SpendingLimitExceededError,
)
from domain.guardrails import LONGEST_WINDOW_MINUTES, WINDOWS, GuardrailPolicy
from domain.money import MAX_MICROS
from tests.conftest import FixedClock

DEFAULT_LIMITS = {"5MIN": 30_000, "60MIN": 50_000, "1440MIN": 120_000, "72H": 250_000}
POLICY = GuardrailPolicy(enabled=True, limits=DEFAULT_LIMITS)
KEY_RETENTION = LONGEST_WINDOW_MINUTES  # minutes an idempotency key is remembered
MAX_AHEAD = timedelta(minutes=3)  # how far a writer's clock may run ahead of the true one
# Writers' clock offsets (seconds): true, 2 min ahead/behind, 10 min behind, 100 h ahead.
WRITER_OFFSETS = [0, 120, -120, -600, 100 * 3600]

amounts = st.integers(min_value=1, max_value=30_000)
grant_amounts = st.integers(min_value=1, max_value=400_000)
limit_values = st.none() | st.just(0) | st.integers(min_value=1, max_value=200_000)
# Window names as a caller might write them; the aggregate normalises them.
window_spellings = st.sampled_from(
    ["5min", "5MIN", "15min", "60MIN", "60min", "1440min", "48h", "48H", "72h"]
)


def minute(at: datetime) -> int:
    return int(at.timestamp()) // 60


def plain_copy(value: Any) -> Any:
    """Deep copy of dicts and lists (the aggregate's other values are immutable)."""
    if isinstance(value, dict):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_copy(v) for v in value]
    return value


def state_of(account: CreditAccount) -> dict[str, Any]:
    """A snapshot of the aggregate's attributes, pending events left out."""
    return plain_copy({k: v for k, v in vars(account).items() if k != "_pending_events"})


def without_modified_on(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k != "_modified_on"}


def event_name(event: DomainEvent) -> str:
    return type(event).__name__


def refusal(short: bool, over: set[str]) -> tuple[type[DomainError], ...] | None:
    """The errors a spend may be refused with (None: it must apply)."""
    errors: list[type[DomainError]] = []
    if short:
        errors.append(InsufficientCreditsError)
    if over:
        errors.append(SpendingLimitExceededError)
    return tuple(errors) or None


def check_refusal(error: DomainError, short: bool, over: set[str]) -> None:
    if isinstance(error, SpendingLimitExceededError):
        assert {v["window"] for v in error.violations} == over
    else:
        assert isinstance(error, InsufficientCreditsError)
        assert short


@dataclass
class Outcome:
    """A command's result and the names of the events it emitted besides hold expiry."""

    result: Any = None
    emitted: list[str] = field(default_factory=list)
    error: DomainError | None = None


@dataclass
class Model:
    """What the account should hold, in plain integers."""

    balance: int = 0
    total_granted: int = 0
    total_charged: int = 0
    total_debited: int = 0
    cap: int = 0
    floor: int = 0  # lowest available may be: -cap, or lower if the cap was cut below it
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    spends: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, minute, amount)
    resets: dict[str, tuple[int, int]] = field(default_factory=dict)  # window -> (minute, seq)
    limits: dict[str, int] = field(default_factory=dict)
    keys: dict[str, tuple[int, str, dict[str, Any]]] = field(default_factory=dict)
    last_at: datetime = field(default_factory=lambda: FixedClock().now)  # newest event's time

    @property
    def held(self) -> int:
        return sum(h["amount"] - h["captured"] for h in self.holds.values())

    def live_held(self, now: datetime) -> int:
        return sum(
            h["amount"] - h["captured"] for h in self.holds.values() if h["expires_at"] > now
        )

    def due(self, now: datetime) -> set[str]:
        return {hid for hid, h in self.holds.items() if h["expires_at"] <= now}

    def effective_limits(self) -> dict[str, int]:
        merged = {**DEFAULT_LIMITS, **self.limits}
        return {name: limit for name, limit in merged.items() if limit > 0}

    def window_spend(self, now: datetime) -> dict[str, int]:
        now_minute = minute(now)
        totals = {}
        for name, width in WINDOWS:
            reset = self.resets.get(name)
            if reset is not None and now_minute - reset[0] < width:
                totals[name] = sum(a for seq, _, a in self.spends if seq >= reset[1])
            else:
                totals[name] = sum(a for _, m, a in self.spends if m > now_minute - width)
        return totals

    def spend_refusals(self, amount: int, now: datetime) -> tuple[bool, set[str]]:
        """(funds too short, windows that would go over) for spending ``amount`` now."""
        held = self.live_held(now)
        short = self.balance - held - amount < -self.cap
        spent = self.window_spend(now)
        over = {
            name
            for name, limit in self.effective_limits().items()
            if spent[name] + held + amount > limit
        }
        if not short and over:
            only_holds = all(spent[name] + amount <= self.effective_limits()[name] for name in over)
            event("window refusal" + (" (because of holds)" if only_holds else ""))
        return short, over

    def spend(self, amount: int, now: datetime) -> None:
        self.spends.append((len(self.spends), minute(now), amount))
        self.total_charged += amount
        self.balance -= amount

    def buckets(self) -> list[list[int]]:
        """Spend per minute, without minutes pruned as older than the longest window."""
        if not self.spends:
            return []
        cutoff = self.spends[-1][1] - LONGEST_WINDOW_MINUTES  # pruned at the latest spend
        per_minute: dict[int, int] = {}
        for _, at, amount in self.spends:
            if at > cutoff:
                per_minute[at] = per_minute.get(at, 0) + amount
        return [[at, amount] for at, amount in sorted(per_minute.items())]

    def remember(self, key: str, now: datetime, kind: str, params: dict[str, Any]) -> None:
        at = minute(now)
        self.keys[key] = (at, kind, params)
        self.keys = {k: v for k, v in self.keys.items() if v[0] > at - KEY_RETENTION}


class CreditAccountMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FixedClock()  # the true time
        self.offset = timedelta(0)  # the current writer's clock, relative to the true one
        self.writer = BoundedClock(
            lambda: self.clock.now + self.offset, reference=self.clock, max_ahead=MAX_AHEAD
        )
        self.account = CreditAccount(user_id="user-1", at=self.clock.now)
        self.events: list[DomainEvent] = list(self.account.collect_events())
        self.model = Model()
        self.counter = 0
        self.hold_ids: list[str] = []  # every hold id ever placed (released ones can be reused)

    # ------------------------------------------------------------------ plumbing

    def raw(self) -> datetime:
        """The current writer's clock (as bounded): what commands are given as ``now``."""
        return self.writer()

    def business(self) -> datetime:
        """The time the next command runs at: never before the newest event."""
        return max(self.raw(), self.model.last_at)

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def invoke(self, kind: str, params: dict[str, Any], key: str) -> Any:
        now = self.raw()
        account = self.account
        if kind == "grant":
            return account.grant(params["amount"], key=key, now=now, reason="top-up")
        if kind == "charge":
            return account.charge(params["amount"], key=key, now=now, policy=POLICY)
        if kind == "hold":
            return account.place_hold(
                params["hold_id"],
                params["amount"],
                expires_at=params["expires_at"],
                key=key,
                now=now,
                policy=POLICY,
            )
        if kind == "capture":
            return account.capture(params["hold_id"], params["amount"], key=key, now=now)
        if kind == "release":
            return account.release(params["hold_id"], key=key, now=now)
        if kind == "debit":
            return account.debit(params["amount"], key=key, now=now, kind="refund")
        raise AssertionError(kind)

    def execute(
        self, call: Callable[[], Any], expected: tuple[type[DomainError], ...] | None
    ) -> Outcome:
        """Run ``call``; ``expected`` None means it must apply, else the errors it may raise."""
        now = self.business()
        due = self.model.due(now)
        before = state_of(self.account)
        after_expiry = None  # the state if the command expires the due holds, then refuses
        if due:
            expired_copy = copy.deepcopy(self.account)
            expired_copy.expire_holds(now)
            after_expiry = without_modified_on(state_of(expired_copy))
        try:
            result = call()
        except DomainError as exc:
            if expected is None:
                raise AssertionError(f"the model expected success, got {exc!r}") from exc
            if not isinstance(exc, expected):
                raise AssertionError(f"{exc!r} is not one of {expected}") from exc
            emitted = self.account.collect_events()
            self.events.extend(emitted)
            self.moved(emitted, now)
            assert all(event_name(e) == "HoldExpired" for e in emitted), emitted
            expired = {e.hold_id for e in emitted}
            assert expired in (set(), due)
            if expired:
                assert without_modified_on(state_of(self.account)) == after_expiry
            else:
                assert state_of(self.account) == before
            self.expire_in_model(expired)
            event(f"refused: {type(exc).__name__}")
            return Outcome(error=exc)
        assert expected is None, f"expected one of {expected}, but the command applied"
        emitted = self.account.collect_events()
        self.events.extend(emitted)
        self.moved(emitted, now)
        expiring = [e for e in emitted if event_name(e) == "HoldExpired"]
        assert emitted[: len(expiring)] == expiring, "hold expiry comes first"
        self.expire_in_model({e.hold_id for e in expiring})
        if result is True:  # an applied money command expires every due hold first
            assert self.model.due(now) == set(), "a due hold was not expired"
        names = [event_name(e) for e in emitted[len(expiring) :]]
        event(f"applied: {'+'.join(names) or 'no event'}{' after expiry' if expiring else ''}")
        return Outcome(result=result, emitted=names)

    def moved(self, emitted: list[DomainEvent], now: datetime) -> None:
        """Every event a command emits is at its business time, which becomes the newest."""
        assert [getattr(e, "at", now) for e in emitted] == [now] * len(emitted)
        if emitted:
            self.model.last_at = now

    def expire_in_model(self, expired: set[str]) -> None:
        assert expired <= self.model.due(self.business())
        for hold_id in expired:
            del self.model.holds[hold_id]

    def check_spend_accepted(self) -> None:
        """After an applied charge or hold: funds and every enabled window are within limits."""
        now = self.business()
        account = self.account
        assert account.available >= -account.cap
        spent = account.window_spend(self.raw())
        limits = POLICY.effective_limits(account.limits)
        assert limits == self.model.effective_limits()
        model_spent = self.model.window_spend(now)
        for window, limit in limits.items():
            assert spent[window] + account.held <= limit, (window, spent[window], limit)
            assert model_spent[window] + self.model.held <= limit, (window, limit)

    # --------------------------------------------------------------------- rules

    @initialize(amount=st.just(0) | grant_amounts)
    def opening_balance(self, amount: int) -> None:
        if amount:
            self.grant(amount)

    @rule(amount=grant_amounts)
    def grant(self, amount: int) -> None:
        key = self.fresh("grant")
        now = self.business()
        outcome = self.execute(lambda: self.invoke("grant", {"amount": amount}, key), None)
        assert outcome.result is True
        assert outcome.emitted == ["Granted"]
        self.model.balance += amount
        self.model.total_granted += amount
        self.model.remember(key, now, "grant", {"amount": amount})

    @rule(amount=amounts)
    def charge(self, amount: int) -> None:
        key = self.fresh("charge")
        now = self.business()
        short, over = self.model.spend_refusals(amount, now)
        expected = refusal(short, over)
        outcome = self.execute(lambda: self.invoke("charge", {"amount": amount}, key), expected)
        if outcome.error is not None:
            check_refusal(outcome.error, short, over)
            return
        assert outcome.result is True
        assert outcome.emitted == ["Charged"]
        self.model.spend(amount, now)
        self.model.remember(key, now, "charge", {"amount": amount})
        self.check_spend_accepted()

    @rule(
        amount=amounts,
        ttl=st.integers(min_value=1, max_value=6 * 3600),
        reuse=st.booleans(),
        data=st.data(),
    )
    def place_hold(self, amount: int, ttl: int, reuse: bool, data: st.DataObject) -> None:
        now = self.business()
        if reuse and self.hold_ids:
            hold_id = data.draw(st.sampled_from(self.hold_ids), label="hold_id")
        else:
            hold_id = self.fresh("hold")
        key = self.fresh("hold-key")
        expires_at = now + timedelta(seconds=ttl)
        params = {"hold_id": hold_id, "amount": amount, "expires_at": expires_at}
        conflict = hold_id in self.model.holds  # still in the aggregate, even if past expiry
        short, over = self.model.spend_refusals(amount, now)
        expected = (HoldConflictError,) if conflict else refusal(short, over)
        outcome = self.execute(lambda: self.invoke("hold", params, key), expected)
        if outcome.error is not None:
            if not conflict:
                check_refusal(outcome.error, short, over)
            return
        assert outcome.result is True
        assert outcome.emitted == ["HoldPlaced"]
        self.model.holds[hold_id] = {"amount": amount, "captured": 0, "expires_at": expires_at}
        self.hold_ids.append(hold_id)
        self.model.remember(key, now, "hold", params)
        self.check_spend_accepted()

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data(), fraction=st.floats(min_value=0.0, max_value=1.3), extra=st.booleans())
    def capture(self, data: st.DataObject, fraction: float, extra: bool) -> None:
        now = self.business()
        hold_id = data.draw(st.sampled_from(sorted(self.model.holds)), label="hold_id")
        hold = self.model.holds[hold_id]
        remaining = hold["amount"] - hold["captured"]
        amount = max(1, round(remaining * fraction)) + int(extra and fraction >= 1.0)
        key = self.fresh("capture")
        expected: tuple[type[DomainError], ...] | None = None
        if hold["expires_at"] <= now:
            expected = (HoldNotFoundError,)
        elif amount > remaining:
            expected = (HoldConflictError,)
        params = {"hold_id": hold_id, "amount": amount}
        outcome = self.execute(lambda: self.invoke("capture", params, key), expected)
        if outcome.error is not None:
            return
        assert outcome.result is True
        assert outcome.emitted == ["HoldCaptured"]
        self.model.holds[hold_id]["captured"] += amount
        self.model.spend(amount, now)
        self.model.remember(key, now, "capture", params)

    @precondition(lambda self: self.hold_ids)
    @rule(data=st.data(), current=st.booleans())
    def release(self, data: st.DataObject, current: bool) -> None:
        now = self.business()
        # A hold the account still has, or any hold id ever used (released ones included).
        choices = sorted(self.model.holds) if current and self.model.holds else self.hold_ids
        hold_id = data.draw(st.sampled_from(choices), label="hold_id")
        key = self.fresh("release")
        hold = self.model.holds.get(hold_id)
        live = hold is not None and hold["expires_at"] > now
        expected = None if live else (HoldNotFoundError,)
        params = {"hold_id": hold_id}
        outcome = self.execute(lambda: self.invoke("release", params, key), expected)
        if outcome.error is not None:
            return
        assert outcome.result is True
        assert outcome.emitted == ["HoldReleased"]
        del self.model.holds[hold_id]
        self.model.remember(key, now, "release", params)

    @rule(amount=amounts)
    def debit(self, amount: int) -> None:
        key = self.fresh("debit")
        now = self.business()
        held = self.model.live_held(now)
        short = self.model.balance - held - amount < -self.model.cap
        expected = (InsufficientCreditsError,) if short else None
        outcome = self.execute(lambda: self.invoke("debit", {"amount": amount}, key), expected)
        if outcome.error is not None:
            return
        assert outcome.result is True
        assert outcome.emitted == ["Debited"]
        self.model.balance -= amount
        self.model.total_debited += amount
        self.model.remember(key, now, "debit", {"amount": amount})
        assert self.account.available >= -self.account.cap

    @rule(
        kind=st.sampled_from(["charge", "hold", "debit"]),
        offset=st.integers(min_value=-1, max_value=1),
        data=st.data(),
    )
    def spend_at_edge(self, kind: str, offset: int, data: st.DataObject) -> None:
        """Spend exactly what the tightest of funds and windows allows, or one micro-USD off."""
        now = self.business()
        held = self.model.live_held(now)
        room = self.model.balance - held + self.model.cap  # the funds edge
        if kind != "debit":  # debits are not spend: no window counts them
            spent = self.model.window_spend(now)
            for window, limit in self.model.effective_limits().items():
                room = min(room, limit - spent[window] - held)
        amount = room + offset
        if not 1 <= amount <= MAX_MICROS:
            return
        if kind == "charge":
            self.charge(amount)
        elif kind == "hold":
            self.place_hold(amount, ttl=3600, reuse=False, data=data)
        else:
            self.debit(amount)

    @precondition(lambda self: self.model.holds)
    @rule(data=st.data(), after=st.sampled_from([0, 0, 1]))
    def advance_to_hold_expiry(self, data: st.DataObject, after: int) -> None:
        """Move the clock to exactly a hold's deadline (or a microsecond past it)."""
        hold_id = data.draw(st.sampled_from(sorted(self.model.holds)), label="hold_id")
        target = self.model.holds[hold_id]["expires_at"] + timedelta(microseconds=after)
        skew = self.raw() - self.clock.now  # the current writer's clock reaches the target
        self.clock.now = max(self.clock.now, target - skew)

    @rule()
    def expire_holds(self) -> None:
        due = self.model.due(self.business())
        outcome = self.execute(lambda: self.account.expire_holds(self.raw()), None)
        assert outcome.result == len(due)
        assert outcome.emitted == []
        assert self.model.due(self.business()) == set()

    @rule(
        seconds=st.one_of(
            st.integers(min_value=1, max_value=120),
            st.integers(min_value=2, max_value=90).map(lambda m: m * 60),
            st.integers(min_value=1, max_value=80).map(lambda h: h * 3600),
        )
    )
    def advance_clock(self, seconds: int) -> None:
        self.clock.advance(seconds=seconds)

    @rule(offset=st.sampled_from(WRITER_OFFSETS))
    def switch_writer(self, offset: int) -> None:
        """The next commands come from another replica (or after an NTP step)."""
        self.offset = timedelta(seconds=offset)

    @rule(cap=st.integers(min_value=0, max_value=60_000))
    def set_cap(self, cap: int) -> None:
        outcome = self.execute(
            lambda: self.account.set_cap(cap, now=self.raw(), actor="admin"), None
        )
        assert outcome.emitted == ["CapSet"]
        self.model.cap = cap
        self.model.floor = min(-cap, self.account.available)

    @rule(changes=st.dictionaries(window_spellings, limit_values, min_size=1, max_size=3))
    def set_limits(self, changes: dict[str, int | None]) -> None:
        outcome = self.execute(
            lambda: self.account.set_limits(changes, now=self.raw(), actor="admin"), None
        )
        assert outcome.emitted == ["LimitsSet"]
        for name, limit in changes.items():
            window = name.upper()
            if limit is None:
                self.model.limits.pop(window, None)
            else:
                self.model.limits[window] = limit

    @rule(windows=st.none() | st.lists(window_spellings, min_size=1, max_size=3))
    def reset_windows(self, windows: list[str] | None) -> None:
        outcome = self.execute(
            lambda: self.account.reset_windows(
                windows, now=self.raw(), actor="admin", reason="support ticket"
            ),
            None,
        )
        assert outcome.emitted == ["WindowsReset"]
        expected = [w.upper() for w in windows] if windows else [name for name, _ in WINDOWS]
        assert outcome.result == expected
        for name in expected:
            self.model.resets[name] = (minute(self.model.last_at), len(self.model.spends))

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data())
    def repeat_command(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model.keys)), label="key")
        _, kind, params = self.model.keys[key]
        before = state_of(self.account)
        assert self.invoke(kind, params, key) is False
        assert self.account.collect_events() == []
        assert state_of(self.account) == before

    @precondition(lambda self: self.model.keys)
    @rule(data=st.data(), other_kind=st.booleans())
    def reuse_key_differently(self, data: st.DataObject, other_kind: bool) -> None:
        key = data.draw(st.sampled_from(sorted(self.model.keys)), label="key")
        _, kind, params = self.model.keys[key]
        if other_kind or kind == "release":
            kind, params = (
                ("charge", {"amount": 1}) if kind == "grant" else ("grant", {"amount": 1})
            )
        else:
            params = {**params, "amount": params["amount"] + 1}
        before = state_of(self.account)
        with pytest.raises(IdempotencyConflictError):
            self.invoke(kind, params, key)
        assert self.account.collect_events() == []
        assert state_of(self.account) == before

    @rule(
        variant=st.sampled_from(
            [
                "zero",
                "negative",
                "bool",
                "too_large",
                "empty_key",
                "bad_source",
                "long_reason",
                "past_expiry",
                "bad_cap",
                "bad_window",
                "bad_limit",
                "no_reason",
                "unknown_hold",
            ]
        )
    )
    def invalid_command(self, variant: str) -> None:
        account, now = self.account, self.raw()
        key = self.fresh("bad")
        calls: dict[str, tuple[Callable[[], Any], type[DomainError]]] = {
            "zero": (
                lambda: account.charge(0, key=key, now=now, policy=POLICY),
                InvalidAmountError,
            ),
            "negative": (lambda: account.grant(-5, key=key, now=now), InvalidAmountError),
            "bool": (lambda: account.debit(True, key=key, now=now), InvalidAmountError),
            "too_large": (
                lambda: account.grant(MAX_MICROS + 1, key=key, now=now),
                InvalidAmountError,
            ),
            "empty_key": (lambda: account.grant(5, key=" ", now=now), InvalidArgumentError),
            "bad_source": (
                lambda: account.grant(5, key=key, now=now, source="gift"),
                InvalidArgumentError,
            ),
            "long_reason": (
                lambda: account.grant(5, key=key, now=now, reason="x" * (MAX_TEXT + 1)),
                InvalidArgumentError,
            ),
            "past_expiry": (
                lambda: account.place_hold(
                    self.fresh("hold"), 5, expires_at=now, key=key, now=now, policy=POLICY
                ),
                InvalidArgumentError,
            ),
            "bad_cap": (lambda: account.set_cap(-1, now=now, actor="admin"), InvalidAmountError),
            "bad_window": (
                lambda: account.set_limits({"61min": 5}, now=now, actor="admin"),
                InvalidArgumentError,
            ),
            "bad_limit": (
                lambda: account.set_limits({"60min": -5}, now=now, actor="admin"),
                InvalidAmountError,
            ),
            "no_reason": (
                lambda: account.reset_windows(None, now=now, actor="admin", reason=""),
                InvalidArgumentError,
            ),
        }
        if variant == "unknown_hold":
            params = {"hold_id": self.fresh("nohold"), "amount": 1}
            calls[variant] = (lambda: self.invoke("capture", params, key), HoldNotFoundError)
        call, error = calls[variant]
        self.execute(call, (error,))

    # ---------------------------------------------------------------- invariants

    @invariant()
    def matches_model(self) -> None:
        account, model = self.account, self.model
        assert account.balance == model.balance
        assert account.total_granted == model.total_granted
        assert account.total_charged == model.total_charged
        assert account.total_debited == model.total_debited
        assert account.held == model.held
        assert account.cap == model.cap
        assert account.limits == model.limits
        assert account.holds == model.holds
        assert set(account.keys) == set(model.keys)
        assert account.buckets == model.buckets()
        assert {w: r[0] for w, r in account.resets.items()} == {
            w: r[0] for w, r in model.resets.items()
        }
        now = self.business()
        assert account.last_at == model.last_at
        assert account.window_spend(self.raw()) == model.window_spend(now)
        assert account.available_at(self.raw()) == model.balance - model.live_held(now)

    @invariant()
    def no_wild_clock_moves_business_time(self) -> None:
        """However far ahead a writer's clock is, the account's time stays near the truth,
        so no spend bucket, key or hold is aged by it."""
        assert self.account.last_at <= self.clock.now + MAX_AHEAD

    @invariant()
    def money_invariants(self) -> None:
        account = self.account
        assert account.total_granted - account.total_charged - account.total_debited == (
            account.balance
        )
        assert account.held == sum(h["amount"] - h["captured"] for h in account.holds.values())
        for hold in account.holds.values():
            assert 0 <= hold["captured"] <= hold["amount"]
        assert account.available == account.balance - account.held
        # available >= -cap, unless set_cap cut the cap below the overage already taken
        # (set_cap does not refuse that); every applied spend re-checks -cap itself.
        assert account.available >= self.model.floor
        assert account.overage == max(0, -account.balance)

    @invariant()
    def replay_gives_the_same_aggregate(self) -> None:
        assert self.account.pending_events == []
        replayed: Any = None
        for recorded in self.events:
            replayed = recorded.mutate(replayed)
        assert isinstance(replayed, CreditAccount)
        assert vars(replayed) == vars(self.account)
        assert replayed.version == len(self.events)


CreditAccountMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCreditAccount = CreditAccountMachine.TestCase
