"""CreditAccount: one per user; every rule about credits, holds and guard rails lives here.

Money is integer micro-USD. Each public command validates against the current state and
rules, then triggers exactly one past-tense event whose apply step (the decorated private
method) only changes state, so old events always replay even after rules change.

Invariants, enforced on every command:
- no command that spends or debits takes available (balance minus outstanding holds) below
  minus the overage cap (an admin lowering the cap later blocks further spend, it does not
  rewrite what was already spent);
- a hold is captured at most up to its amount, never after release or expiry;
- no enabled guard-rail window (spend plus outstanding holds) goes over its limit;
- a money command with an idempotency key already seen is one effect: it is not applied
  again (same parameters) or is refused (different parameters).

Idempotency keys are remembered for 72 h (docs/adr/0016): the most recent ``KEY_CACHE_SIZE``
in the state (``keys``), every one in a table the event store writes in the same transaction
as the events. A key no longer in ``keys`` is looked up through the ``earlier_keys`` context
the ledger service sets up; without one, the table's unique key still refuses the save.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any, Protocol
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event
from eventsourcing.domain import Snapshot as LibrarySnapshot

from domain import bucket_codec, guardrails
from domain.errors import (
    HoldConflictError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidAmountError,
    InvalidArgumentError,
    SpendingLimitExceededError,
)
from domain.guardrails import GuardrailPolicy, minute_of
from domain.holds import Hold
from domain.money import MAX_MICROS
from domain.pan import refuse_pan

ACCOUNT_NAMESPACE = UUID("6f0b8f3e-6f2e-4f5e-9d51-6a1c2b7d9e01")
IDEMPOTENCY_RETENTION_MINUTES = guardrails.LONGEST_WINDOW_MINUTES
KEY_CACHE_SIZE = 256  # idempotency keys kept in the state; older ones are in the key table
MAX_TEXT = 500

GRANT_SOURCES = frozenset({"admin", "payment", "auto_renew", "promotion"})
DEBIT_KINDS = frozenset({"refund", "dispute", "adjustment"})


@lru_cache(maxsize=65_536)
def account_id_for(user_id: str) -> UUID:
    """The account id is derived from the user id, so each user has exactly one account."""
    return uuid5(ACCOUNT_NAMESPACE, f"credit-account:{user_id}")


def _positive(amount: int, field: str = "amount") -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmountError(field, "must be an integer number of micro-USD")
    if amount <= 0:
        raise InvalidAmountError(field, "must be greater than zero")
    if amount > MAX_MICROS:
        raise InvalidAmountError(field, "is too large")
    return amount


def _text(value: str, field: str, *, required: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{field} must be a string", field=field)
    if required and not value.strip():
        raise InvalidArgumentError(f"{field} is required", field=field)
    if len(value) > MAX_TEXT:
        raise InvalidArgumentError(f"{field} is longer than {MAX_TEXT} characters", field=field)
    if "\x00" in value:
        raise InvalidArgumentError(f"{field} must not contain NUL characters", field=field)
    return refuse_pan(value, field)  # last line: no card number in an event


FINGERPRINTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Granted": ("grant", ("amount", "source", "reference")),
    "Charged": ("charge", ("amount", "reference")),
    "HoldPlaced": ("hold", ("hold_id", "amount", "expires_at")),
    "HoldCaptured": ("capture", ("hold_id", "amount")),
    "HoldReleased": ("release", ("hold_id",)),
    "Debited": ("debit", ("amount", "kind", "reference")),
}
"""Per keyed event: the command word and the fields its idempotency key is bound to.

The single source for the command's check, the apply step and the key table's rows; the
strings are stored (state and key table), so an entry never changes once events exist.
"""


def fingerprint(event_name: str, fields: Mapping[str, Any]) -> str:
    """What a key is bound to: ``command:field:field`` (datetimes as ISO, stored as such)."""
    command, names = FINGERPRINTS[event_name]
    parts = [command]
    for name in names:
        value = fields[name]
        parts.append(value.isoformat() if isinstance(value, datetime) else str(value))
    return ":".join(parts)


def _trim_keys(keys: dict[str, list[Any]], cutoff: int, dropped: int) -> int:
    """Forget keys at or before ``cutoff``, then drop the oldest beyond ``KEY_CACHE_SIZE``.

    Returns the newest minute dropped by count (those keys are still in the key table).
    Keys are in the order they were applied, which is the order of their minutes.
    """
    while keys:
        oldest = next(iter(keys))
        minute: int = keys[oldest][1]
        if minute > cutoff and len(keys) <= KEY_CACHE_SIZE:
            break
        del keys[oldest]
        if minute > cutoff:
            dropped = max(dropped, minute)
    return dropped


class EarlierKeys(Protocol):
    """Where keys that left an account's state are found (the event store's key table)."""

    def fingerprint(self, account_id: UUID, key: str) -> str | None:
        """The fingerprint ``key`` was recorded with on this account, or None."""
        ...


_EARLIER: ContextVar[tuple[EarlierKeys, bool] | None] = ContextVar("earlier_keys", default=None)


@contextmanager
def earlier_keys(source: EarlierKeys, *, always: bool = False) -> Iterator[None]:
    """Let commands run in this block (this thread) check keys no longer in the state.

    ``source`` is asked only when the account dropped keys from its state in the last 72 h,
    or for every key not in the state with ``always`` (after a save was refused: the table
    may also hold a key older than 72 h that has not been pruned yet).
    """
    token = _EARLIER.set((source, always))
    try:
        yield
    finally:
        _EARLIER.reset(token)


class CreditAccount(Aggregate):
    """A user's prepaid credit balance, holds, overage cap, auto-renew and guard-rail state."""

    # snapshots: v1 kept every idempotency key of 72 h in ``keys``; v2 had no ``last_at``;
    # v3 and older stored the spend buckets as ``buckets`` ([minute, micros] pairs, or packed)
    class_version = 4

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A v1 snapshot's keys: keep the newest, as replaying its events now would."""
        keys: dict[str, list[Any]] = state["keys"]
        newest = max((entry[1] for entry in keys.values()), default=0)
        state["keys_dropped"] = _trim_keys(keys, newest - IDEMPOTENCY_RETENTION_MINUTES, 0)

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """A v2 snapshot's business time: the newest minute its state records (a lower bound)."""
        if "buckets" in state:
            minutes = [b[0] for b in state["buckets"]]
        else:  # taken from the columns by the library's own ``Snapshot`` (tests' old rows)
            minutes = list(state["spend_minutes"])
        minutes += [entry[1] for entry in state["keys"].values()]
        minutes += [reset[0] for reset in state["resets"].values()]
        opened: datetime = state["opened_at"]
        newest = max(minutes, default=0) * 60
        state.setdefault("last_at", max(opened, datetime.fromtimestamp(newest, opened.tzinfo)))

    @staticmethod
    def upcast_v3_v4(state: dict[str, Any]) -> None:
        """v3 and older kept ``buckets`` (pairs, or packed: docs/adr/0033); now two columns."""
        if "buckets" in state:
            state["spend_minutes"], state["spend_amounts"] = bucket_codec.unpack(
                state.pop("buckets")
            )

    @staticmethod
    def create_id(user_id: str, **_: Any) -> UUID:
        return account_id_for(user_id)

    class Snapshot(LibrarySnapshot):
        """The account's snapshot with its spend columns packed as ``buckets``
        (``domain.bucket_codec``, docs/adr/0033 and 0036): a busy account's 72 h of minute
        buckets decode in C into the two columns. The stored form is the one v3 stored, so
        snapshots stored before (packed, or plain pairs: ``upcast_v3_v4``) still load, and
        the code before v4 reads these."""

        @classmethod
        def take(cls, aggregate: Any) -> Any:
            snapshot = super().take(aggregate)
            state = snapshot.state
            state["buckets"] = bucket_codec.pack(
                state.pop("spend_minutes"), state.pop("spend_amounts")
            )
            return snapshot

        def mutate(self, _: None) -> Any:
            account = super().mutate(None)  # a v3 or older state: the upcasts unpack it
            state = account.__dict__
            if "buckets" in state:
                state["spend_minutes"], state["spend_amounts"] = bucket_codec.unpack(
                    state.pop("buckets")
                )
            return account

    @event("Opened")
    def __init__(self, user_id: str, at: datetime) -> None:
        self.user_id = user_id
        self.opened_at = at
        self.last_at = at  # business time of the newest event: commands never run before it
        self.balance = 0
        self.total_granted = 0
        self.total_charged = 0
        self.total_debited = 0
        self.cap = 0
        self.held = 0
        # stored shape (snapshots): hold id -> {"amount", "captured", "expires_at"}; read it
        # through ``hold`` / ``live_holds``
        self.holds: dict[str, dict[str, Any]] = {}
        # spend per minute of the last 72 h as two columns (docs/adr/0036): ``spend_minutes``
        # strictly increasing, ``spend_amounts`` the micros of each; read them as pairs
        # through ``buckets``
        self.spend_minutes: list[int] = []
        self.spend_amounts: list[int] = []
        self.resets: dict[str, list[int]] = {}
        self.limits: dict[str, int] = {}
        self.auto_renew: dict[str, Any] = {
            "enabled": False,
            "threshold": 0,
            "amount": 0,
            "payment_method": "",
        }
        self.auto_renew_armed = True
        self.keys: dict[str, list[Any]] = {}
        self.keys_dropped = 0  # minute of the newest key dropped from ``keys`` by count

    # ------------------------------------------------------------------ queries

    @property
    def available(self) -> int:
        """Balance minus outstanding holds (holds past expiry included until expired)."""
        return self.balance - self.held

    def business_time(self, now: datetime) -> datetime:
        """The time a command or read given ``now`` runs at: never before the newest event.

        Writers' clocks differ (replicas, NTP steps); taking the later of the two keeps the
        account's own time monotonic, so nothing recorded later sorts before a reset, a
        spend or a key already recorded (docs/consistency.md).
        """
        last: datetime = self.last_at
        return now if now >= last else last

    def hold(self, hold_id: str) -> Hold | None:
        """The hold with this id, live or past expiry but not yet expired; None if none."""
        state = self.holds.get(hold_id)
        return None if state is None else Hold.from_state(hold_id, state)

    def live_holds(self, now: datetime) -> list[Hold]:
        """Holds that have not reached their expiry at ``now`` (business time)."""
        now = self.business_time(now)
        holds = (Hold.from_state(hold_id, state) for hold_id, state in self.holds.items())
        return [hold for hold in holds if hold.live_at(now)]

    def held_at(self, now: datetime) -> int:
        """Outstanding holds that still count at ``now`` (those past expiry no longer do)."""
        if not self.holds:
            return 0
        return sum(hold.remaining for hold in self.live_holds(now))

    def available_at(self, now: datetime) -> int:
        """Available credit as of ``now``: holds past their expiry no longer count."""
        return self.balance - self.held_at(now)

    @property
    def overage(self) -> int:
        return max(0, -self.balance)

    @property
    def buckets(self) -> list[list[int]]:
        """The spend buckets as ``[minute, micros]`` pairs (a copy; for reports and tests)."""
        return [[m, a] for m, a in zip(self.spend_minutes, self.spend_amounts, strict=True)]

    def _window_spend(
        self, minute: int, windows: tuple[str, ...] = guardrails.WINDOW_NAMES
    ) -> dict[str, int]:
        return guardrails.column_window_spend(
            self.spend_minutes, self.spend_amounts, minute, self.resets, windows
        )

    def window_spend(self, now: datetime) -> dict[str, int]:
        """Captured and charged spend per guard-rail window at ``now`` (holds excluded)."""
        minute = minute_of(self.business_time(now))
        return self._window_spend(minute)

    def check_funds(self, amount: int) -> None:
        """Raise if taking ``amount`` would put available credit below minus the cap."""
        self._check_funds(amount, self.available)

    def _check_funds(self, amount: int, available: int) -> None:
        if available - amount < -self.cap:
            raise InsufficientCreditsError(
                "Insufficient credits", available=available, cap=self.cap, requested=amount
            )

    def check_spend(self, amount: int, now: datetime, policy: GuardrailPolicy) -> None:
        """Raise if spending ``amount`` now would break the funds or a guard-rail window.

        Exactly what a charge at ``now`` decides (holds due by then no longer count), so
        ``spending_report`` shows ``remaining >= amount`` in every window iff this passes.
        """
        now = self.business_time(now)
        held = self.held_at(now)
        self._check_funds(amount, self.balance - held)
        limits = policy.effective_limits(self.limits)
        if not limits:
            return
        spent = self._window_spend(minute_of(now), tuple(limits))
        violations = [
            {
                "window": name,
                "limit": limit,
                "spent": spent[name],
                "held": held,
                "requested": amount,
            }
            for name, limit in limits.items()
            if spent[name] + held + amount > limit
        ]
        if violations:
            raise SpendingLimitExceededError(violations, spent)

    def spending_report(self, now: datetime, policy: GuardrailPolicy) -> guardrails.SpendingReport:
        """Spend, holds, limit and room left per window at ``now``, as ``check_spend`` sees them."""
        now = self.business_time(now)
        limits = policy.effective_limits(self.limits)
        return guardrails.SpendingReport.of(
            now,
            enabled=policy.enabled or bool(limits),  # in force for this account
            spent=self._window_spend(minute_of(now)),
            held=self.held_at(now),
            limits=limits,
        )

    def dropped_keys_since(self, now: datetime) -> bool:
        """True if keys recorded in the last 72 h left the state (too many to keep)."""
        minute = minute_of(self.business_time(now))
        return self.keys_dropped > minute - IDEMPOTENCY_RETENTION_MINUTES

    def seen(self, key: str, fingerprint: str, now: datetime) -> bool:
        """True if this key was already applied with these parameters; raise if with others."""
        _text(key, "idempotency_key", required=True)
        previous = self.keys.get(key)
        if previous is None:
            context = _EARLIER.get()
            if context is None:
                return False
            source, always = context
            if not always and not self.dropped_keys_since(now):
                return False
            recorded = source.fingerprint(self.id, key)
            if recorded is None:
                return False
            previous = [recorded]
        if previous[0] != fingerprint:
            raise IdempotencyConflictError(
                "Idempotency key was already used with different parameters", key=key
            )
        return True

    # ----------------------------------------------------------------- commands

    def grant(
        self,
        amount: int,
        *,
        key: str,
        now: datetime,
        source: str = "admin",
        reason: str = "",
        reference: str = "",
        actor: str = "",
    ) -> bool:
        """Add credits (settled payment, admin grant, auto-renew). Returns False if replayed."""
        now = self.business_time(now)
        _positive(amount)
        if source not in GRANT_SOURCES:
            raise InvalidArgumentError(f"unknown grant source {source!r}", field="source")
        fields = {"amount": amount, "source": source, "reference": reference}
        if self.seen(key, fingerprint("Granted", fields), now):
            return False
        self._expire_due(now)
        self._granted(
            amount=amount,
            source=source,
            reason=_text(reason, "reason"),
            reference=_text(reference, "reference"),
            actor=_text(actor, "actor"),
            key=key,
            at=now,
        )
        return True

    def charge(
        self,
        amount: int,
        *,
        key: str,
        now: datetime,
        policy: GuardrailPolicy,
        reason: str = "",
        reference: str = "",
        actor: str = "",
    ) -> bool:
        """Spend credits directly (per-request fee, one-off charge). Returns False if replayed."""
        now = self.business_time(now)
        _positive(amount)
        if self.seen(key, fingerprint("Charged", {"amount": amount, "reference": reference}), now):
            return False
        self._expire_due(now)
        self.check_spend(amount, now, policy)
        self._charged(
            amount=amount,
            reason=_text(reason, "reason"),
            reference=_text(reference, "reference"),
            actor=_text(actor, "actor"),
            key=key,
            at=now,
        )
        self._maybe_auto_renew(now)
        return True

    def place_hold(
        self,
        hold_id: str,
        amount: int,
        *,
        expires_at: datetime,
        key: str,
        now: datetime,
        policy: GuardrailPolicy,
        reason: str = "",
        reference: str = "",
        actor: str = "",
    ) -> bool:
        """Reserve funds until ``expires_at``; they count as spend for the guard rails."""
        now = self.business_time(now)
        _positive(amount)
        _text(hold_id, "hold_id", required=True)
        fields = {"hold_id": hold_id, "amount": amount, "expires_at": expires_at}
        if self.seen(key, fingerprint("HoldPlaced", fields), now):
            return False
        if hold_id in self.holds:
            raise HoldConflictError("A hold with this id already exists", hold_id=hold_id)
        if expires_at <= now:
            raise InvalidArgumentError("expires_at must be in the future", field="expires_at")
        self._expire_due(now)
        self.check_spend(amount, now, policy)
        self._hold_placed(
            hold_id=hold_id,
            amount=amount,
            expires_at=expires_at,
            reason=_text(reason, "reason"),
            reference=_text(reference, "reference"),
            actor=_text(actor, "actor"),
            key=key,
            at=now,
        )
        self._maybe_auto_renew(now)
        return True

    def capture(
        self,
        hold_id: str,
        amount: int,
        *,
        key: str,
        now: datetime,
        reason: str = "",
        actor: str = "",
    ) -> bool:
        """Turn part of a hold into a charge. Pre-approved: no new funds or window check."""
        now = self.business_time(now)
        _positive(amount)
        if self.seen(key, fingerprint("HoldCaptured", {"hold_id": hold_id, "amount": amount}), now):
            return False
        self._expire_due(now)
        hold = self._active_hold(hold_id)
        if amount > hold.remaining:
            raise HoldConflictError(
                "Capture exceeds what remains of the hold",
                hold_id=hold_id,
                remaining=hold.remaining,
                requested=amount,
            )
        self._hold_captured(
            hold_id=hold_id,
            amount=amount,
            reason=_text(reason, "reason"),
            actor=_text(actor, "actor"),
            key=key,
            at=now,
        )
        return True

    def release(self, hold_id: str, *, key: str, now: datetime, actor: str = "") -> bool:
        """Free what remains of a hold."""
        now = self.business_time(now)
        if self.seen(key, fingerprint("HoldReleased", {"hold_id": hold_id}), now):
            return False
        self._expire_due(now)
        hold = self._active_hold(hold_id)
        self._hold_released(
            hold_id=hold_id,
            amount=hold.remaining,
            actor=_text(actor, "actor"),
            key=key,
            at=now,
        )
        return True

    def expire_holds(self, now: datetime) -> int:
        """Expire every hold whose deadline has passed; returns how many."""
        now = self.business_time(now)
        return self._expire_due(now)

    def debit(
        self,
        amount: int,
        *,
        key: str,
        now: datetime,
        kind: str = "refund",
        reason: str = "",
        reference: str = "",
        actor: str = "",
    ) -> bool:
        """Take back credits (refund, dispute, adjustment); not spend, so no window counts it."""
        now = self.business_time(now)
        _positive(amount)
        if kind not in DEBIT_KINDS:
            raise InvalidArgumentError(f"unknown debit kind {kind!r}", field="kind")
        fields = {"amount": amount, "kind": kind, "reference": reference}
        if self.seen(key, fingerprint("Debited", fields), now):
            return False
        self._expire_due(now)
        self.check_funds(amount)
        self._debited(
            amount=amount,
            kind=kind,
            reason=_text(reason, "reason"),
            reference=_text(reference, "reference"),
            actor=_text(actor, "actor"),
            key=key,
            at=now,
        )
        self._maybe_auto_renew(now)
        return True

    def set_cap(self, cap: int, *, now: datetime, actor: str, reason: str = "") -> None:
        """Set the maximum overage (how far below zero the balance may go)."""
        now = self.business_time(now)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0 or cap > MAX_MICROS:
            raise InvalidAmountError("cap", "must be a non-negative integer number of micro-USD")
        self._cap_set(cap=cap, actor=_text(actor, "actor"), reason=_text(reason, "reason"), at=now)

    def configure_auto_renew(
        self,
        *,
        enabled: bool,
        threshold: int,
        amount: int,
        payment_method: str,
        now: datetime,
        actor: str,
    ) -> None:
        """Save auto-renew settings: below ``threshold`` available, buy ``amount`` once."""
        now = self.business_time(now)
        if enabled:
            _positive(amount)
            _positive(threshold, "threshold")
            _text(payment_method, "payment_method", required=True)
        self._auto_renew_configured(
            enabled=bool(enabled),
            threshold=threshold,
            amount=amount,
            payment_method=_text(payment_method, "payment_method"),
            actor=_text(actor, "actor"),
            at=now,
        )

    def set_limits(
        self, changes: dict[str, int | None], *, now: datetime, actor: str, reason: str = ""
    ) -> None:
        """Override guard-rail limits for this user (micro-USD; 0 = off; None = back to default)."""
        now = self.business_time(now)
        normalised: dict[str, int | None] = {}
        for name, limit in changes.items():
            try:
                window = guardrails.normalise_window(name)
            except ValueError as exc:
                raise InvalidArgumentError(str(exc), field="window") from None
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
            ):
                raise InvalidAmountError(window, "limit must be a non-negative integer or null")
            normalised[window] = limit
        if not normalised:
            raise InvalidArgumentError("no limits given", field="limits")
        self._limits_set(
            changes=normalised,
            actor=_text(actor, "actor"),
            reason=_text(reason, "reason"),
            at=now,
        )

    def reset_windows(
        self, windows: list[str] | None, *, now: datetime, actor: str, reason: str
    ) -> list[str]:
        """Admin only: forget spend so far in the given windows (all if none); reason required."""
        now = self.business_time(now)
        _text(reason, "reason", required=True)
        _text(actor, "actor", required=True)
        try:
            names = (
                [guardrails.normalise_window(w) for w in windows]
                if windows
                else list(guardrails.WINDOW_NAMES)
            )
        except ValueError as exc:
            raise InvalidArgumentError(str(exc), field="window") from None
        minute = minute_of(now)
        self._windows_reset(
            windows=names,
            minute=minute,
            bucket_amount=guardrails.column_bucket_amount(
                self.spend_minutes, self.spend_amounts, minute
            ),
            actor=actor,
            reason=reason,
            at=now,
        )
        return names

    # ------------------------------------------------------------------ helpers

    def _active_hold(self, hold_id: str) -> Hold:
        hold = self.hold(hold_id)
        if hold is None:
            raise HoldNotFoundError("No active hold with this id", hold_id=hold_id)
        return hold

    def _expire_due(self, now: datetime) -> int:
        due = [hid for hid, h in self.holds.items() if h["expires_at"] <= now]
        for hold_id in due:
            remaining = Hold.from_state(hold_id, self.holds[hold_id]).remaining
            self._hold_expired(hold_id=hold_id, amount=remaining, at=now)
        return len(due)

    def _maybe_auto_renew(self, now: datetime) -> None:
        settings = self.auto_renew
        if settings["enabled"] and self.auto_renew_armed and self.available < settings["threshold"]:
            self._auto_renew_triggered(
                amount=settings["amount"],
                threshold=settings["threshold"],
                payment_method=settings["payment_method"],
                available=self.available,
                at=now,
            )

    def _moved(self, at: datetime) -> None:
        # max: events stored before business time was monotonic may be out of order
        self.last_at = max(self.last_at, at)

    def _remember(self, key: str, fingerprint: str, at: datetime) -> None:
        minute = minute_of(at)
        keys = self.keys
        keys[key] = [fingerprint, minute]
        self.keys_dropped = _trim_keys(
            keys, minute - IDEMPOTENCY_RETENTION_MINUTES, self.keys_dropped
        )

    def _spend(self, amount: int, at: datetime) -> None:
        minute = minute_of(at)
        guardrails.column_add_spend(self.spend_minutes, self.spend_amounts, minute, amount)
        guardrails.column_prune(self.spend_minutes, self.spend_amounts, minute)
        self.total_charged += amount

    # ------------------------------------------------------------ apply (events)

    @event("Granted")
    def _granted(
        self,
        amount: int,
        source: str,
        reason: str,
        reference: str,
        actor: str,
        key: str,
        at: datetime,
    ) -> None:
        self._moved(at)
        self.balance += amount
        self.total_granted += amount
        fields = {"amount": amount, "source": source, "reference": reference}
        self._remember(key, fingerprint("Granted", fields), at)
        if self.available >= self.auto_renew["threshold"]:
            self.auto_renew_armed = True

    @event("Charged")
    def _charged(
        self, amount: int, reason: str, reference: str, actor: str, key: str, at: datetime
    ) -> None:
        self._moved(at)
        self.balance -= amount
        self._spend(amount, at)
        self._remember(key, fingerprint("Charged", {"amount": amount, "reference": reference}), at)

    @event("HoldPlaced")
    def _hold_placed(
        self,
        hold_id: str,
        amount: int,
        expires_at: datetime,
        reason: str,
        reference: str,
        actor: str,
        key: str,
        at: datetime,
    ) -> None:
        self._moved(at)
        self.holds[hold_id] = {"amount": amount, "captured": 0, "expires_at": expires_at}
        self.held += amount
        fields = {"hold_id": hold_id, "amount": amount, "expires_at": expires_at}
        self._remember(key, fingerprint("HoldPlaced", fields), at)

    @event("HoldCaptured")
    def _hold_captured(
        self, hold_id: str, amount: int, reason: str, actor: str, key: str, at: datetime
    ) -> None:
        self._moved(at)
        self.holds[hold_id]["captured"] += amount
        self.held -= amount
        self.balance -= amount
        self._spend(amount, at)
        fields = {"hold_id": hold_id, "amount": amount}
        self._remember(key, fingerprint("HoldCaptured", fields), at)

    @event("HoldReleased")
    def _hold_released(self, hold_id: str, amount: int, actor: str, key: str, at: datetime) -> None:
        self._moved(at)
        del self.holds[hold_id]
        self.held -= amount
        self._remember(key, fingerprint("HoldReleased", {"hold_id": hold_id}), at)

    @event("HoldExpired")
    def _hold_expired(self, hold_id: str, amount: int, at: datetime) -> None:
        self._moved(at)
        del self.holds[hold_id]
        self.held -= amount

    @event("Debited")
    def _debited(
        self,
        amount: int,
        kind: str,
        reason: str,
        reference: str,
        actor: str,
        key: str,
        at: datetime,
    ) -> None:
        self._moved(at)
        self.balance -= amount
        self.total_debited += amount
        fields = {"amount": amount, "kind": kind, "reference": reference}
        self._remember(key, fingerprint("Debited", fields), at)

    @event("CapSet")
    def _cap_set(self, cap: int, actor: str, reason: str, at: datetime) -> None:
        self._moved(at)
        self.cap = cap

    @event("AutoRenewConfigured")
    def _auto_renew_configured(
        self,
        enabled: bool,
        threshold: int,
        amount: int,
        payment_method: str,
        actor: str,
        at: datetime,
    ) -> None:
        self._moved(at)
        self.auto_renew = {
            "enabled": enabled,
            "threshold": threshold,
            "amount": amount,
            "payment_method": payment_method,
        }
        self.auto_renew_armed = True

    @event("AutoRenewTriggered")
    def _auto_renew_triggered(
        self, amount: int, threshold: int, payment_method: str, available: int, at: datetime
    ) -> None:
        self._moved(at)
        self.auto_renew_armed = False

    @event("LimitsSet")
    def _limits_set(
        self, changes: dict[str, int | None], actor: str, reason: str, at: datetime
    ) -> None:
        self._moved(at)
        for window, limit in changes.items():
            if limit is None:
                self.limits.pop(window, None)
            else:
                self.limits[window] = limit

    @event("WindowsReset")
    def _windows_reset(
        self,
        windows: list[str],
        minute: int,
        bucket_amount: int,
        actor: str,
        reason: str,
        at: datetime,
    ) -> None:
        self._moved(at)
        for window in windows:
            self.resets[window] = [minute, bucket_amount]


# ------------------------------------------------------------ the key table

_EVENT_NAMES = {getattr(CreditAccount, name): name for name in FINGERPRINTS}


def recorded_key(name: str, data: dict[str, Any]) -> tuple[str, str, int] | None:
    """``(key, fingerprint, minute)`` that a CreditAccount event named ``name`` records.

    ``data`` is the event's fields; datetimes may be given as their ISO strings (as stored).
    None for events that record no key. ``FINGERPRINTS``, as the command and apply use.
    """
    if name not in FINGERPRINTS:
        return None
    at = data["at"]
    return (
        data["key"],
        fingerprint(name, data),
        minute_of(datetime.fromisoformat(at) if isinstance(at, str) else at),
    )


def event_key(domain_event: object) -> tuple[str, str, int] | None:
    """``recorded_key`` of a domain event object (None unless a keyed CreditAccount event)."""
    name = _EVENT_NAMES.get(type(domain_event))
    return None if name is None else recorded_key(name, vars(domain_event))
