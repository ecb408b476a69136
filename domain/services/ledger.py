"""The ledger: credit accounts as an event-sourced application, and its use cases.

Use cases are thin: run the aggregate's command through the group committer (load, call,
save) and return a small record. Reads of money state come from the aggregate, never from a
read model; reporting reads come from the projections.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar, cast
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    Repository,
)
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import IntegrityError, Recording
from eventsourcing.utils import EnvType

from domain.clocks import system_clock
from domain.credits import CreditAccount, account_id_for, earlier_keys, event_key
from domain.crypto_wallets import NamedWallet
from domain.errors import AccountNotFoundError
from domain.guardrails import GuardrailPolicy, SpendingReport
from domain.ports.clock import Clock
from domain.services.committer import GroupCommitter, SaveWith
from domain.usage import ProxyUsage

SNAPSHOT_INTERVAL = 100
HISTORY_PAGE = 1_000  # events read per query when listing an account's history
SEARCH_SCAN = 32  # a time search reads the last this many versions in one query
OPTIMISTIC_TRIES = 3  # then ``transact`` runs on the committer's thread
T = TypeVar("T")
Pair = tuple[UUID, str]


class KeyStore(Protocol):
    """The event store's idempotency key table.

    Its recorder: ``infrastructure.eventstore.idempotency``.

    ``LedgerApp.save`` hands the recorder each keyed event's row as ``idempotency_keys``; the
    recorder inserts them in the save's transaction under a unique ``(account_id, key)``.
    """

    records_idempotency_keys: bool

    def idempotency_fingerprints(self, pairs: Sequence[Pair]) -> dict[Pair, str]: ...


def replay(aggregate: Any, events: Iterable[Any]) -> Any:
    """Apply stored events to an aggregate (or ``None``), in order.

    The library's ``project_aggregate`` without its per-event
    ``assert isinstance(event, CanMutateProtocol)``: a runtime-Protocol check that costs
    ~190 µs an event on this machine, more than the mutation itself (docs/adr/0036).
    """
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


class ReplayingRepository(Repository[UUID]):
    """The library's repository, replaying with :func:`replay` unless told otherwise."""

    def get(
        self,
        aggregate_id: UUID,
        *,
        version: int | None = None,
        projector_func: Any = replay,
        fastforward_skipping: bool = False,
        deepcopy_from_cache: bool = True,
    ) -> Any:
        return super().get(
            aggregate_id,
            version=version,
            projector_func=projector_func,
            fastforward_skipping=fastforward_skipping,
            deepcopy_from_cache=deepcopy_from_cache,
        )


class LedgerApp(Application[UUID]):
    """Event store for the money ledger (tables ``ledger_events`` / ``ledger_snapshots``).

    Two hot-path changes to the library's ``save`` (measured in docs/performance.md, recorded
    in docs/adr/0006): aggregates are recognised with a nominal ``isinstance`` before the
    library's runtime-Protocol checks, and snapshots are taken from the aggregates just saved
    (all of one save in one write) instead of re-reading each from the database.

    Every save also records the idempotency keys of its events in the recorder's key table,
    in the same transaction (docs/adr/0016): the recorder must be one that does
    (``APPLICATION_RECORDER_TOPIC``, set by ``infrastructure.eventstore.factory``).
    """

    name = "ledger"
    snapshotting_intervals: ClassVar[dict[Any, int]] = {
        CreditAccount: SNAPSHOT_INTERVAL,
        NamedWallet: SNAPSHOT_INTERVAL,  # an exchange's wallet can be named by many requests
    }

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        if not getattr(self.recorder, "records_idempotency_keys", False):
            raise TypeError(
                f"{type(self.recorder).__name__} does not record idempotency keys; "
                "build the ledger's environment with "
                "infrastructure.eventstore.factory.eventstore_env"
            )
        self.keys = cast(KeyStore, self.recorder)

    def construct_repository(self) -> Repository[UUID]:
        """The library's repository (its settings from the environment), replaying without
        the per-event Protocol check (:class:`ReplayingRepository` adds no state)."""
        repository = super().construct_repository()
        repository.__class__ = ReplayingRepository
        return repository

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        processing_event: ProcessingEvent[UUID] = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, Aggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        rows = [
            (domain_event.originator_id, *found)
            for domain_event in processing_event.events
            if (found := event_key(domain_event)) is not None
        ]
        if rows:
            processing_event.saved_kwargs["idempotency_keys"] = rows
        recordings = self._record(processing_event)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        """Snapshot, from memory, each saved aggregate whose new events crossed an interval."""
        if self.snapshots is None:
            return
        due: dict[UUID, Any] = {}
        for domain_event in processing_event.events:
            aggregate = processing_event.aggregates.get(domain_event.originator_id)
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval and domain_event.originator_version % interval == 0:
                due[domain_event.originator_id] = aggregate
        if due:
            self.snapshots.put(
                [
                    getattr(type(aggregate), "Snapshot", Snapshot).take(aggregate)
                    for aggregate in due.values()
                ]
            )


class _BatchKeys:
    """``EarlierKeys`` for one batch: the answers looked up for it, then one query per key."""

    def __init__(self, store: KeyStore, asked: Sequence[Pair]) -> None:
        self.store = store
        self.asked = set(asked)
        self.found = store.idempotency_fingerprints(asked) if asked else {}

    def fingerprint(self, account_id: UUID, key: str) -> str | None:
        pair = (account_id, key)
        if pair in self.asked:
            return self.found.get(pair)
        return self.store.idempotency_fingerprints([pair]).get(pair)


class _AccountKeys:
    """The group committer's ``KeyCheck`` for credit accounts."""

    def __init__(self, store: KeyStore) -> None:
        self.store = store

    def incomplete(self, aggregate: CreditAccount, now: datetime) -> bool:
        return aggregate.dropped_keys_since(now)

    def scope(
        self, work: Sequence[tuple[CreditAccount, Sequence[str]]]
    ) -> AbstractContextManager[None]:
        """Every key the batch names that its states do not hold, looked up in one query."""
        asked = [
            (account.id, key) for account, keys in work for key in keys if key not in account.keys
        ]
        return earlier_keys(_BatchKeys(self.store, asked), always=True)


@dataclass(frozen=True)
class Outcome:
    """What a money command did: applied (False = idempotent replay) and its log position."""

    applied: bool
    position: int | None


@dataclass(frozen=True)
class HoldView:
    hold_id: str
    amount: int
    captured: int
    expires_at: datetime


@dataclass(frozen=True)
class AccountView:
    """A consistent picture of one account at one instant (all amounts micro-USD)."""

    user_id: str
    account_id: UUID
    version: int
    as_of: datetime
    balance: int
    available: int
    held: int
    total_granted: int
    total_charged: int
    total_debited: int
    overage: int
    cap: int
    auto_renew: dict[str, Any]
    limits: dict[str, int]
    effective_limits: dict[str, int]
    window_spend: dict[str, int]
    holds: tuple[HoldView, ...]
    spending: SpendingReport  # what enforcement decides at ``as_of`` (spent, held, remaining)


@dataclass(frozen=True)
class AuditEntry:
    """One recorded event of an account, for audit output."""

    version: int
    name: str
    at: datetime
    recorded_at: datetime
    data: dict[str, Any]


class LedgerService:
    """Money use cases over CreditAccount aggregates."""

    def __init__(
        self,
        app: LedgerApp,
        *,
        policy: GuardrailPolicy,
        clock: Clock = system_clock,
        on_saved: Callable[[int], None] | None = None,
        max_batch: int = 512,
    ) -> None:
        self.app = app
        self.policy = policy
        self.clock = clock
        self.committer: GroupCommitter[CreditAccount] = GroupCommitter(
            app, clock, on_saved=on_saved, max_batch=max_batch, keys=_AccountKeys(app.keys)
        )

    def close(self) -> None:
        self.committer.close()

    # --------------------------------------------------------------- commands

    def _run(
        self,
        user_id: str,
        command: Callable[[CreditAccount, datetime], Any],
        key: str | None = None,
    ) -> Outcome:
        def create(now: datetime) -> CreditAccount:
            return CreditAccount(user_id=user_id, at=now)

        result, position = self.committer.execute(account_id_for(user_id), command, create, key=key)
        return Outcome(applied=result is not False, position=position)

    def transact(
        self,
        owner: str,
        run: Callable[[CreditAccount, datetime], tuple[T, Aggregate]],
        *,
        clock: Clock | None = None,
    ) -> T:
        """Run ``run`` on the owner's account and save it with the aggregate it returns.

        Due holds are expired first (the state a charge would see). Both are saved in one
        transaction under optimistic concurrency; on a conflict both are reloaded and ``run``
        is called again. After ``OPTIMISTIC_TRIES`` conflicts (a busy account: the group
        commits keep winning) it runs on the committer's thread, in turn with those commits,
        so settlement never starves. The committer's cached copy of the account is dropped
        after an optimistic save, since it is now behind. Keys no longer in the account's
        state are looked up one by one (after a conflict: every key not in it). ``clock``
        times the optimistic tries; on the committer, the ledger's clock decides.
        """
        account_id = account_id_for(owner)
        clock = clock or self.clock
        for attempt in range(OPTIMISTIC_TRIES):
            now = clock()
            try:
                account: CreditAccount = self.app.repository.get(account_id)
            except AggregateNotFoundError:
                account = CreditAccount(user_id=owner, at=now)
            with earlier_keys(_BatchKeys(self.app.keys, ()), always=attempt > 0):
                account.expire_holds(now)
                result, other = run(account, now)
            try:
                self.app.save(account, other)
            except IntegrityError:
                time.sleep(random.uniform(0, 0.002 * 2**attempt))  # noqa: S311 - jitter
                continue
            self.committer.evict(account_id)
            return result

        def command(account: CreditAccount, now: datetime) -> SaveWith:
            account.expire_holds(now)
            result, other = run(account, now)
            return SaveWith(result, (other,))

        def create(now: datetime) -> CreditAccount:
            return CreditAccount(user_id=owner, at=now)

        found, _position = self.committer.execute(account_id, command, create, atomic=True)
        return cast(T, found)

    def record_usage(self, usage: ProxyUsage) -> None:
        """Save one flush of a process's proxy or model counters (reports; moves no money)."""
        self.app.save(usage)

    def open_account(self, user_id: str) -> Outcome:
        return self._run(user_id, lambda _account, _now: None)

    def grant(self, user_id: str, amount: int, *, key: str, **audit: str) -> Outcome:
        return self._run(user_id, lambda a, now: a.grant(amount, key=key, now=now, **audit), key)

    def charge(self, user_id: str, amount: int, *, key: str, **audit: str) -> Outcome:
        policy = self.policy
        return self._run(
            user_id, lambda a, now: a.charge(amount, key=key, now=now, policy=policy, **audit), key
        )

    def place_hold(
        self,
        user_id: str,
        hold_id: str,
        amount: int,
        *,
        expires_at: datetime,
        key: str,
        **audit: str,
    ) -> Outcome:
        policy = self.policy
        return self._run(
            user_id,
            lambda a, now: a.place_hold(
                hold_id, amount, expires_at=expires_at, key=key, now=now, policy=policy, **audit
            ),
            key,
        )

    def capture(
        self, user_id: str, hold_id: str, amount: int, *, key: str, **audit: str
    ) -> Outcome:
        return self._run(
            user_id, lambda a, now: a.capture(hold_id, amount, key=key, now=now, **audit), key
        )

    def release(self, user_id: str, hold_id: str, *, key: str, actor: str = "") -> Outcome:
        return self._run(
            user_id, lambda a, now: a.release(hold_id, key=key, now=now, actor=actor), key
        )

    def expire_holds(self, user_id: str) -> Outcome:
        return self._run(user_id, lambda a, now: a.expire_holds(now) > 0)

    def expire_due(self, account_id: UUID) -> int:
        """Expire the account's due holds (the aggregate decides which); how many it did."""
        expired, _position = self.committer.execute(account_id, lambda a, now: a.expire_holds(now))
        return int(expired)

    def debit(self, user_id: str, amount: int, *, key: str, **audit: str) -> Outcome:
        return self._run(user_id, lambda a, now: a.debit(amount, key=key, now=now, **audit), key)

    def set_cap(self, user_id: str, cap: int, *, actor: str, reason: str = "") -> Outcome:
        return self._run(
            user_id, lambda a, now: a.set_cap(cap, now=now, actor=actor, reason=reason)
        )

    def configure_auto_renew(
        self,
        user_id: str,
        *,
        enabled: bool,
        threshold: int,
        amount: int,
        payment_method: str,
        actor: str,
    ) -> Outcome:
        return self._run(
            user_id,
            lambda a, now: a.configure_auto_renew(
                enabled=enabled,
                threshold=threshold,
                amount=amount,
                payment_method=payment_method,
                now=now,
                actor=actor,
            ),
        )

    def set_limits(
        self, user_id: str, changes: dict[str, int | None], *, actor: str, reason: str = ""
    ) -> Outcome:
        return self._run(
            user_id, lambda a, now: a.set_limits(changes, now=now, actor=actor, reason=reason)
        )

    def reset_windows(
        self, user_id: str, windows: list[str] | None, *, actor: str, reason: str
    ) -> Outcome:
        return self._run(
            user_id,
            lambda a, now: a.reset_windows(windows, now=now, actor=actor, reason=reason),
        )

    # ----------------------------------------------------------------- queries

    def _get(self, user_id: str) -> CreditAccount:
        try:
            account: CreditAccount = self.app.repository.get(account_id_for(user_id))
        except AggregateNotFoundError:
            raise AccountNotFoundError("No credit account for this user", user_id=user_id) from None
        return account

    def account(self, user_id: str) -> AccountView:
        """The account as it is now (read from the event store, not a projection)."""
        return self._view(self._get(user_id), self.clock())

    def check_spend(self, user_id: str, amount: int) -> AccountView:
        """Raise the 402 errors a charge of ``amount`` would get now; change nothing.

        Evaluated as a charge is: on the state with due holds expired (in this copy only;
        the hold sweep records the expiries).
        """
        account = self._get(user_id)
        now = self.clock()
        account.expire_holds(now)
        account.check_spend(amount, now, self.policy)
        return self._view(account, now)

    def spending(self, user_id: str) -> SpendingReport:
        """Every guard-rail window as a charge now would see it (read from the aggregate, at
        the service clock's time, never before the account's newest event)."""
        now = self.clock()
        try:
            return self._get(user_id).spending_report(now, self.policy)
        except AccountNotFoundError:
            limits = self.policy.effective_limits({})
            enabled = self.policy.enabled
            return SpendingReport.of(now, enabled=enabled, spent={}, held=0, limits=limits)

    def account_at(self, user_id: str, at: datetime) -> AccountView:
        """Time travel: the account folded from its events recorded up to ``at``.

        The version in force at ``at`` is found by searching the stream (a few primary-key
        reads, whatever its length); the repository then loads it from the snapshot at or
        below that version plus at most ``SNAPSHOT_INTERVAL`` events.
        """
        account_id = account_id_for(user_id)
        version = self._version_at(user_id, at, strict=False)
        if version == 0:
            raise AccountNotFoundError("The account did not exist at that time", user_id=user_id)
        account: CreditAccount = self.app.repository.get(account_id, version=version)
        return self._view(account, at)

    def version_at(self, user_id: str, at: datetime, *, strict: bool = False) -> int:
        """The account's newest version whose business time is ``<= at`` (``< at`` if
        ``strict``), 0 if none: a search of the stream, whatever its length."""
        return self._version_at(user_id, at, strict=strict)

    def history(
        self,
        user_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditEntry]:
        """The account's events, oldest first, optionally within [since, until], at most
        ``limit`` of them. The first event at or after ``since`` is found by searching the
        stream, so a page costs the same on an account of any length."""
        account_id = account_id_for(user_id)
        after = 0
        if since is not None:
            after = self._version_at(user_id, since, strict=True)
        elif not self._head(account_id):
            raise AccountNotFoundError("No credit account for this user", user_id=user_id)
        entries: list[AuditEntry] = []
        page = HISTORY_PAGE if limit is None else min(HISTORY_PAGE, limit)
        while limit is None or len(entries) < limit:
            batch = list(self.app.events.get(account_id, gt=after, limit=page))
            for domain_event in batch:
                at = _business_time(domain_event)
                if until and at > until:
                    return entries
                if since and at < since:
                    continue
                entries.append(_audit_entry(domain_event, at))
                if limit is not None and len(entries) >= limit:
                    break
            if len(batch) < page:
                break
            after = batch[-1].originator_version
        return entries

    # ------------------------------------------------------------- stream search

    def _head(self, account_id: UUID) -> Any | None:
        """The stream's newest event (None if it has none)."""
        return next(iter(self.app.events.get(account_id, desc=True, limit=1)), None)

    def _at_version(self, account_id: UUID, version: int) -> datetime:
        (domain_event,) = self.app.events.get(account_id, gt=version - 1, lte=version)
        return _business_time(domain_event)

    def _version_at(self, user_id: str, at: datetime, *, strict: bool) -> int:
        """The newest version whose business time is ``<= at`` (``< at`` if ``strict``); 0 if
        none. An account's business time never goes back from one event to the next (ADR
        0018), so the stream is searched, not replayed: interpolation on time, halving when
        a guess does not halve the range, and a single read for the last few versions."""
        account_id = account_id_for(user_id)
        head = self._head(account_id)
        if head is None:
            raise AccountNotFoundError("No credit account for this user", user_id=user_id)

        def before(t: datetime) -> bool:
            return t < at if strict else t <= at

        hi_v, hi_t = head.originator_version, _business_time(head)
        if before(hi_t):
            return int(hi_v)
        lo_v, lo_t = 1, self._at_version(account_id, 1)
        if not before(lo_t):
            return 0
        halve = False
        while hi_v - lo_v > SEARCH_SCAN:
            if halve or hi_t <= lo_t:
                guess = (lo_v + hi_v) // 2
            else:
                share = (at - lo_t) / (hi_t - lo_t)
                guess = min(hi_v - 1, max(lo_v + 1, lo_v + int(share * (hi_v - lo_v))))
            width = hi_v - lo_v
            t = self._at_version(account_id, guess)
            if before(t):
                lo_v, lo_t = guess, t
            else:
                hi_v, hi_t = guess, t
            halve = (hi_v - lo_v) * 2 > width  # this guess did not halve the range
        for domain_event in self.app.events.get(account_id, gt=lo_v, lte=hi_v):
            if not before(_business_time(domain_event)):
                break
            lo_v = domain_event.originator_version
        return int(lo_v)

    def _view(self, account: CreditAccount, now: datetime) -> AccountView:
        now = account.business_time(now)
        held = account.held_at(now)
        spending = account.spending_report(now, self.policy)  # every window, summed once
        return AccountView(
            user_id=account.user_id,
            account_id=account.id,
            version=account.version,
            as_of=now,
            balance=account.balance,
            available=account.balance - held,
            held=held,
            total_granted=account.total_granted,
            total_charged=account.total_charged,
            total_debited=account.total_debited,
            overage=account.overage,
            cap=account.cap,
            auto_renew=dict(account.auto_renew),
            limits=dict(account.limits),
            effective_limits=self.policy.effective_limits(account.limits),
            window_spend=spending.spent,
            holds=tuple(
                HoldView(h.hold_id, h.amount, h.captured, h.expires_at)
                for h in account.live_holds(now)
            ),
            spending=spending,
        )


def _business_time(domain_event: Any) -> datetime:
    """When an event happened in the account's business time (its ``at``; else recorded)."""
    at: datetime = getattr(domain_event, "at", domain_event.timestamp)
    return at


def _audit_entry(domain_event: Any, at: datetime) -> AuditEntry:
    data = {
        k: v
        for k, v in vars(domain_event).items()
        if k not in {"originator_id", "originator_version", "timestamp", "at"}
    }
    return AuditEntry(
        version=domain_event.originator_version,
        name=type(domain_event).__name__,
        at=at,
        recorded_at=domain_event.timestamp,
        data=data,
    )
