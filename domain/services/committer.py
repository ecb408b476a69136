"""Group commit: many concurrent commands, one durable transaction.

The event store serialises writers on a table lock, so one save per command caps
throughput at one commit per round trip. The committer runs every command on one thread,
collects the commands that arrived meanwhile, applies them to their aggregates and saves
all of them in a single ``app.save(...)`` transaction. A caller is answered only after
that transaction committed, so every acknowledged command is durable.

Correctness does not depend on the committer's cache of aggregates: a stale aggregate
(written by another process) makes the save fail on its ``(id, version)`` key, and a
command refused on cached state is re-checked on freshly loaded state before the refusal
is returned. Either way the group is replayed on fresh state, a bounded number of times.

Idempotency keys (docs/adr/0016): an aggregate's state holds only its newest keys; the event
store's key table holds all, under a unique key written in the save's transaction. A batch
runs first on the states alone; a key they no longer hold that is used again makes the save
fail, and the batch is replayed on fresh state with every key it names looked up at once
(``keys.scope``). A refusal from an aggregate that dropped keys recently is re-checked the
same way, so a replay is never answered with a refusal.

A command that fails with anything other than a ``DomainError`` (or, if ``atomic``, fails
after changing its aggregate) fails alone: its aggregate is reloaded and the rest of its
group runs again without it, so one bad command never fails the other callers of its
batch. A command may return ``SaveWith(result, aggregates)`` to have other aggregates saved
in the same transaction (``LedgerService.transact`` under contention).
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from domain.errors import AccountNotFoundError, ConcurrencyError, DomainError
from domain.ports.clock import Clock

log = logging.getLogger(__name__)

A = TypeVar("A", bound=Aggregate)
A_contra = TypeVar("A_contra", bound=Aggregate, contravariant=True)
Command = Callable[[A, datetime], Any]
Factory = Callable[[datetime], A]


class KeyCheck(Protocol[A_contra]):
    """How commands get to know idempotency keys their aggregate's state no longer holds."""

    def incomplete(self, aggregate: A_contra, now: datetime) -> bool:
        """True if the state may lack keys recorded in the retention period (dropped ones)."""
        ...

    def scope(self, work: Sequence[tuple[A_contra, Sequence[str]]]) -> AbstractContextManager[None]:
        """A context in which commands on these aggregates see every recorded key.

        ``work``: each aggregate with the keys its commands named (looked up at once).
        """
        ...


@dataclass(frozen=True)
class SaveWith:
    """A command's result plus other aggregates to save in the same transaction."""

    result: Any
    aggregates: tuple[Aggregate, ...]


@dataclass
class _Item(Generic[A]):
    aggregate_id: UUID
    command: Command[A]
    create: Factory[A] | None
    key: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    position: int | None = None
    atomic: bool = False  # a refusal drops every change the command made
    failed: bool = False  # failed on its own: skipped when its group runs again
    others: tuple[Aggregate, ...] = ()


_STOP = object()
LINGER_GAP = 0.0003  # seconds: keep gathering while entries arrive this close together
LINGER_MAX = 0.002  # seconds: never hold a batch longer than this


class GroupCommitter(Generic[A]):
    """Runs commands against aggregates of one application and saves them in batches."""

    def __init__(
        self,
        app: Application[UUID],
        clock: Clock,
        *,
        max_batch: int = 512,
        cache_size: int = 10_000,
        retries: int = 10,
        on_saved: Callable[[int], None] | None = None,
        keys: KeyCheck[A] | None = None,
    ) -> None:
        self._app = app
        self._keys = keys
        self._clock = clock
        self._max_batch = max_batch
        self._cache: OrderedDict[UUID, A] = OrderedDict()
        self._cache_size = cache_size
        self._retries = retries
        self._on_saved = on_saved
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="ledger-committer", daemon=True)
        self._started = False
        self._lock = threading.Lock()
        self.batches = 0
        self.commands = 0

    def execute(
        self,
        aggregate_id: UUID,
        command: Command[A],
        create: Factory[A] | None = None,
        *,
        key: str | None = None,
        atomic: bool = False,
    ) -> tuple[Any, int | None]:
        """Run ``command(aggregate, now)``; return its result and the commit position.

        ``key``: the idempotency key the command uses, if any (looked up with its batch's).
        ``atomic``: if the command raises, none of its changes are saved (by default a
        refused command keeps what it did before refusing, such as expiring due holds).
        """
        self._ensure_started()
        item: _Item[A] = _Item(aggregate_id, command, create, key, atomic=atomic)
        self._queue.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result, item.position

    def close(self) -> None:
        """Finish queued commands, then stop the thread."""
        if self._started:
            self._queue.put(_STOP)
            self._thread.join()
            self._started = False

    def evict(self, aggregate_id: UUID) -> None:
        """Forget a cached aggregate (the next command loads it afresh)."""
        self._queue.put(("evict", aggregate_id))

    # ----------------------------------------------------------------- thread

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._lock:
            if not self._started:
                self._thread = threading.Thread(
                    target=self._run, name="ledger-committer", daemon=True
                )
                self._thread.start()
                self._started = True

    def _run(self) -> None:
        while True:
            batch, stop = self._next_batch()
            items: list[_Item[A]] = []
            for entry in batch:
                if isinstance(entry, tuple):
                    self._cache.pop(entry[1], None)
                else:
                    items.append(entry)
            if items:
                try:
                    self._process(items)
                except BaseException as exc:  # never leave a caller waiting
                    log.exception("committer batch failed")
                    self._cache.clear()
                    for item in items:
                        if not item.done.is_set():
                            item.error = exc
                            item.done.set()
            if stop:
                return

    def _next_batch(self) -> tuple[list[Any], bool]:
        """Block for one entry, then gather what follows it closely (up to the batch size).

        Callers released by one commit come back a little apart; waiting while entries keep
        arriving within ``LINGER_GAP`` (at most ``LINGER_MAX`` in all) lets them share the
        next commit instead of splitting into a small and a large batch.
        """
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.perf_counter() + LINGER_MAX
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                wait = min(LINGER_GAP, deadline - time.perf_counter())
                if wait <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
        return batch, False

    def _process(self, items: list[_Item[A]]) -> None:
        groups: OrderedDict[UUID, list[_Item[A]]] = OrderedDict()
        for item in items:
            groups.setdefault(item.aggregate_id, []).append(item)
        for checked in (False, True):
            try:
                self._attempt(groups, checked=checked)
                return
            except IntegrityError:
                # Another writer got there first, or a key older than the states keep was
                # used again: once more on fresh state, every key looked up.
                self._forget(groups)
            except BaseException:
                self._forget(groups)
                raise
        for aggregate_id, group in groups.items():
            self._process_alone(aggregate_id, group)

    def _attempt(self, groups: dict[UUID, list[_Item[A]]], *, checked: bool) -> None:
        """Apply and save the whole batch (from the cache, or fresh with every key checked)."""
        now = self._clock()
        loaded: dict[UUID, tuple[A | None, bool]] = {}
        for aggregate_id, group in groups.items():
            cached = not checked and aggregate_id in self._cache
            loaded[aggregate_id] = (self._load(aggregate_id, group, now, use_cache=cached), cached)
        aggregates: dict[UUID, A] = {}
        with self._scope(loaded, groups, checked=checked):
            for aggregate_id, group in groups.items():
                aggregate, cached = loaded[aggregate_id]
                aggregate = self._apply_group(aggregate_id, group, now, aggregate, cached, checked)
                if aggregate is not None:
                    aggregates[aggregate_id] = aggregate
        dirty = _dirty(aggregates.values(), groups.values())
        recordings = self._app.save(*dirty) if dirty else []
        self._finish(groups, aggregates, recordings)

    def _forget(self, groups: dict[UUID, list[_Item[A]]]) -> None:
        for aggregate_id in groups:
            self._cache.pop(aggregate_id, None)

    def _scope(
        self,
        loaded: dict[UUID, tuple[A | None, bool]],
        groups: dict[UUID, list[_Item[A]]],
        *,
        checked: bool,
    ) -> AbstractContextManager[None]:
        """The key context for a checked run: every key the commands name, looked up at once."""
        if not checked or self._keys is None:
            return nullcontext()
        work = [
            (aggregate, [item.key for item in groups[aggregate_id] if item.key is not None])
            for aggregate_id, (aggregate, _) in loaded.items()
            if aggregate is not None
        ]
        return self._keys.scope(work)

    def _process_alone(self, aggregate_id: UUID, group: list[_Item[A]]) -> None:
        """Replay one aggregate's commands on fresh state (every key checked) until it saves."""
        for attempt in range(self._retries):
            now = self._clock()
            aggregate = self._load(aggregate_id, group, now, use_cache=False)
            try:
                with self._scope(
                    {aggregate_id: (aggregate, False)}, {aggregate_id: group}, checked=True
                ):
                    aggregate = self._apply_group(aggregate_id, group, now, aggregate, False, True)
                dirty = _dirty([aggregate] if aggregate else [], [group])
                recordings = self._app.save(*dirty) if dirty else []
            except IntegrityError:
                time.sleep(random.uniform(0, 0.002 * (2**attempt)))  # noqa: S311 - jitter
                continue
            aggregates = {aggregate_id: aggregate} if aggregate is not None else {}
            self._finish({aggregate_id: group}, aggregates, recordings)
            return
        for item in group:
            item.error = ConcurrencyError("Too many concurrent updates; retry the command")
            item.done.set()

    def _apply_group(
        self,
        aggregate_id: UUID,
        group: list[_Item[A]],
        now: datetime,
        aggregate: A | None,
        cached: bool,
        checked: bool,
    ) -> A | None:
        """Run the group's commands on ``aggregate``; ``checked``: every key is known.

        A command that fails alone (see the module docstring) is marked ``failed`` and the
        group starts again on freshly loaded state without it.
        """
        while not self._run_commands(group, now, aggregate):
            self._cache.pop(aggregate_id, None)
            aggregate, cached = self._load(aggregate_id, group, now, use_cache=False), False
        if checked or not any(_refused(item) for item in group):
            return aggregate
        incomplete = (
            self._keys is not None
            and aggregate is not None
            and self._keys.incomplete(aggregate, now)
        )
        if not cached and not incomplete:
            return aggregate
        # A refusal must come from fresh state (not a cached copy another process may have
        # moved past) that knows every key of the last 72 h (not only those it keeps).
        self._cache.pop(aggregate_id, None)
        fresh = self._load(aggregate_id, group, now, use_cache=False)
        if fresh is None or self._keys is None or not self._keys.incomplete(fresh, now):
            return self._apply_group(aggregate_id, group, now, fresh, False, True)
        with self._scope({aggregate_id: (fresh, False)}, {aggregate_id: group}, checked=True):
            return self._apply_group(aggregate_id, group, now, fresh, False, True)

    @staticmethod
    def _run_commands(group: list[_Item[A]], now: datetime, aggregate: A | None) -> bool:
        """Run each command not failed yet; False if one failed alone (state to reload)."""
        for item in group:
            if item.failed:
                continue
            item.result, item.error, item.others = None, None, ()
            if aggregate is None:
                item.error = AccountNotFoundError(
                    "No such account", aggregate_id=str(item.aggregate_id)
                )
                continue
            before = len(aggregate.pending_events)
            try:
                outcome = item.command(aggregate, now)
            except DomainError as exc:
                item.error = exc
                if not item.atomic or len(aggregate.pending_events) == before:
                    continue
                item.failed = True  # refused half-way: the state it leaves is not saved
                return False
            except Exception as exc:
                log.exception(
                    "command on %s failed; the rest of its batch goes on", item.aggregate_id
                )
                item.error, item.failed = exc, True
                return False
            if isinstance(outcome, SaveWith):
                item.result, item.others = outcome.result, outcome.aggregates
            else:
                item.result = outcome
        return True

    def _load(
        self, aggregate_id: UUID, group: list[_Item[A]], now: datetime, *, use_cache: bool
    ) -> A | None:
        if use_cache:
            cached = self._cache.get(aggregate_id)
            if cached is not None:
                self._cache.move_to_end(aggregate_id)
                return cached
        try:
            aggregate: A = self._app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            factory = next((item.create for item in group if item.create is not None), None)
            return factory(now) if factory is not None else None
        return aggregate

    def _finish(
        self,
        groups: dict[UUID, list[_Item[A]]],
        aggregates: dict[UUID, A],
        recordings: list[Any],
    ) -> None:
        positions: dict[UUID, int] = {}
        for recording in recordings:
            originator = recording.domain_event.originator_id
            positions[originator] = max(positions.get(originator, 0), recording.notification.id)
        for aggregate_id, aggregate in aggregates.items():
            self._cache[aggregate_id] = aggregate
            self._cache.move_to_end(aggregate_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self.batches += 1
        for aggregate_id, group in groups.items():
            for item in group:
                item.position = positions.get(aggregate_id)
                item.done.set()
                self.commands += 1
        if positions and self._on_saved is not None:
            self._on_saved(max(positions.values()))


def _refused(item: _Item[Any]) -> bool:
    return isinstance(item.error, DomainError) and not item.failed


def _dirty(aggregates: Iterable[Aggregate], groups: Iterable[list[_Item[Any]]]) -> list[Aggregate]:
    """The aggregates to save: those with new events, and those commands asked to save along."""
    found: dict[int, Aggregate] = {id(a): a for a in aggregates}
    for group in groups:
        for item in group:
            if item.error is None:
                found.update((id(a), a) for a in item.others)
    return [a for a in found.values() if a.pending_events]
