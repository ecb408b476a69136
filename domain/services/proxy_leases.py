"""Per-request proxy fees paid from credit leases: no event-store write per request.

Each serving process holds one credit hold (a *lease*) per active user and spends from it in
memory; spend is captured in batches. A process only spends what its own hold reserved, and
the ``CreditAccount`` aggregate places a hold only if available credit and the guard rails
allow it, so no number of processes can spend more than the ledger granted.

With a ``FeeTally`` (Redis; production) every fee is also added to a tally per lease outside
the process, and another process captures what a dead owner spent (docs/adr/0029). Without
one (embedded SQLite, one process) a crash loses at most that process's unsettled spend (an
under-charge); its holds expire by themselves. See docs/adr/0009-proxy-credit-leases.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import ParamSpec, TypeVar

from domain.clocks import system_clock
from domain.errors import (
    DomainError,
    HoldNotFoundError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidArgumentError,
    SpendingLimitExceededError,
)
from domain.ports.clock import Clock
from domain.ports.fee_tally import FeeTally, LeaseEntry, capture_key, release_key
from domain.services.ledger import LedgerService

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
Refusal = InsufficientCreditsError | SpendingLimitExceededError

PLACE_ATTEMPTS = 3  # the full lease, then up to two smaller ones sized from the refusals
BEAT_EVERY = 2.0  # seconds between "this process is alive" marks in the tally


@dataclass(frozen=True)
class LeaseView:
    """One lease as metrics and tests see it (micro-USD)."""

    hold_id: str
    amount: int
    spent: int
    settled: int
    expires_at: datetime

    @property
    def remaining(self) -> int:
        return self.amount - self.spent


@dataclass(eq=False)
class _Lease:
    hold_id: str
    amount: int
    expires_at: datetime
    usable_until: datetime  # no spend after this: leaves time to settle before expiry
    last_spend: datetime
    spent: int = 0
    settled: int = 0  # captured so far: the position the next capture's key names
    pending: tuple[str, int] | None = None  # (key, amount) of a capture not known to be applied
    released: bool = False
    registered: bool = False  # known to the tally's recovery (always True without a tally)
    write: asyncio.Future[bool] | None = None  # the tally write of the latest spend
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one ledger call at a time


class ProxyLeases:
    """Credit leases of one server process, used from one asyncio event loop.

    ``process_id`` must be unique per process start (see ``unique_process_id``): hold ids
    ``lease:{process_id}:{n}`` and their idempotency keys are derived from it.
    """

    def __init__(
        self,
        ledger: LedgerService,
        *,
        price: int,
        lease_amount: int,
        ttl: timedelta = timedelta(minutes=10),
        process_id: str,
        clock: Clock = system_clock,
        settle_every: float = 5.0,
        refusal_ttl: timedelta = timedelta(seconds=1),
        executor: Executor | None = None,
        tally: FeeTally | None = None,
    ) -> None:
        if isinstance(price, bool) or not isinstance(price, int) or price < 0:
            raise InvalidArgumentError("price must be a non-negative integer", field="price")
        if price > 0 and (not isinstance(lease_amount, int) or lease_amount < price):
            raise InvalidArgumentError(
                "lease_amount must be at least the price", field="lease_amount"
            )
        if ttl < timedelta(seconds=10):
            raise InvalidArgumentError("ttl must be at least 10 seconds", field="ttl")
        if settle_every <= 0:
            raise InvalidArgumentError("settle_every must be positive", field="settle_every")
        if not process_id:
            raise InvalidArgumentError("process_id is required", field="process_id")
        self.ledger = ledger
        self.price = price
        self.lease_amount = lease_amount
        self.ttl = ttl
        self.process_id = process_id
        self.clock = clock
        self.settle_every = settle_every
        self.refusal_ttl = refusal_ttl
        self.margin = max(ttl / 10, timedelta(seconds=5))
        self.idle_after = timedelta(seconds=2 * settle_every)
        self._executor = executor
        self.tally = tally
        self._numbers = itertools.count(1)
        self._leases: dict[str, _Lease] = {}
        self._retiring: list[tuple[str, _Lease]] = []  # to capture the rest of and release
        self._renewals: dict[str, asyncio.Task[None]] = {}
        self._refused: dict[str, tuple[datetime, Refusal]] = {}
        self._closed = False
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ hot path

    def try_spend(self, user_id: str) -> bool:
        """Pay one request from the user's lease, in memory; False if the lease can't."""
        if self.price == 0:
            return True
        lease = self._leases.get(user_id)
        if lease is None or lease.amount - lease.spent < self.price:
            return False
        now = self.clock()
        if now >= lease.usable_until:
            return False
        lease.spent += self.price
        lease.last_spend = now
        if self.tally is not None:
            lease.write = self.tally.add(lease.hold_id, self.price)
        return True

    def tally_write(self, user_id: str) -> Awaitable[bool] | None:
        """The durable write of the user's latest spend (None: no tally, or already stored).

        Await it before answering the request that spent: then a fee the client was answered
        for outlives this process (see the module docstring)."""
        lease = self._leases.get(user_id)
        if lease is None or lease.write is None or lease.write.done():
            return None
        return asyncio.shield(lease.write)

    async def spend(self, user_id: str) -> None:
        """Pay one request, renewing the lease if needed; raise the ledger's 402 error if not.

        Concurrent callers for one user share one renewal. A refusal is remembered for
        ``refusal_ttl`` and answered from memory meanwhile (a grant takes effect after it).
        """
        while not self.try_spend(user_id):
            if self._closed:
                raise RuntimeError("ProxyLeases is closed")
            refused = self._refused.get(user_id)
            if refused is not None:
                if self.clock() < refused[0]:
                    raise refused[1].with_traceback(None)
                del self._refused[user_id]
            renewal = self._renewals.get(user_id)
            if renewal is None:
                renewal = asyncio.get_running_loop().create_task(self._renew(user_id))
                self._renewals[user_id] = renewal
                renewal.add_done_callback(partial(self._renewed, user_id))
            await asyncio.shield(renewal)

    def refund(self, user_id: str) -> bool:
        """Give back one request's fee not yet sent for capture (nothing was delivered).

        Only spend still in memory can come back; once a capture carries it, it stays charged.
        """
        if self.price == 0:
            return False
        lease = self._leases.get(user_id)
        if lease is None:
            return False
        in_flight = lease.pending[1] if lease.pending is not None else 0
        if lease.spent - self.price < lease.settled + in_flight:
            return False
        lease.spent -= self.price
        if self.tally is not None:
            lease.write = self.tally.add(lease.hold_id, -self.price)
        return True

    # ---------------------------------------------------------------- settling

    async def settle(self) -> None:
        """Capture unsettled spend (one capture per lease); retire idle and expiring leases."""
        now = self.clock()
        for user_id, lease in list(self._leases.items()):
            if now >= lease.usable_until or now - lease.last_spend >= self.idle_after:
                self._retire(user_id)
        await self._settle_all()
        self._refused = {u: r for u, r in self._refused.items() if r[0] > now}

    async def run_forever(self) -> None:
        """Settle every ``settle_every`` seconds until closed (or cancelled); with a tally,
        also mark this process alive every ``BEAT_EVERY`` seconds."""
        beats = None
        if self.tally is not None:
            beats = asyncio.get_running_loop().create_task(self._beat_forever(self.tally))
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settle_every)
                if self._closed:
                    return  # close() settles
                try:
                    await self.settle()
                except Exception:
                    log.exception("settling proxy leases failed")
        finally:
            if beats is not None:
                beats.cancel()
                await asyncio.gather(beats, return_exceptions=True)

    async def _beat_forever(self, tally: FeeTally) -> None:
        while not self._closed:
            try:
                await self.beat(tally)
            except Exception:
                log.warning("proxy lease heartbeat failed", exc_info=True)
            await asyncio.sleep(BEAT_EVERY)

    async def beat(self, tally: FeeTally) -> None:
        """Mark this process alive, and register again the leases the tally lost (Redis
        restarted without its data): else they could not be recovered if this process died."""
        await tally.beat(self.process_id)
        held = [(u, lease) for u, lease in self._leases.items() if lease.registered]
        held += [(u, lease) for u, lease in self._retiring if lease.registered]
        known = await tally.registered([lease.hold_id for _, lease in held])
        lost = [(u, lease) for u, lease in held if lease.hold_id not in known]
        for user_id, lease in lost:
            if not lease.released:
                log.warning(
                    "proxy lease %s unknown to the tally: registering it again", lease.hold_id
                )
                lease.registered = False
                await self._register(user_id, lease)

    async def close(self) -> None:
        """Stop leasing; settle and release every lease (call at shutdown)."""
        self._closed = True
        self._stopping.set()
        if self._renewals:
            await asyncio.gather(*self._renewals.values(), return_exceptions=True)
        for user_id in list(self._leases):
            self._retire(user_id)
        await self._settle_all()

    def snapshot(self) -> dict[str, LeaseView]:
        """The current lease of each user."""
        return {
            user_id: LeaseView(
                lease.hold_id, lease.amount, lease.spent, lease.settled, lease.expires_at
            )
            for user_id, lease in self._leases.items()
        }

    # ---------------------------------------------------------------- internals

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(fn, *args, **kwargs))

    def _renewed(self, user_id: str, task: asyncio.Task[None]) -> None:
        self._renewals.pop(user_id, None)
        if not task.cancelled():
            task.exception()  # retrieved: waiters get it from their own await

    async def _renew(self, user_id: str) -> None:
        """Retire the user's lease and place a new one, shrunk to what the ledger allows."""
        if user_id in self._leases:
            self._retire(user_id)
            await self._settle_all(user_id)
        amount = self.lease_amount
        for attempt in range(1, PLACE_ATTEMPTS + 1):
            try:
                self._leases[user_id] = await self._place(user_id, amount)
            except (InsufficientCreditsError, SpendingLimitExceededError) as refusal:
                amount = min(amount, _room(refusal)) // self.price * self.price
                if amount < self.price or attempt == PLACE_ATTEMPTS:
                    self._refused[user_id] = (self.clock() + self.refusal_ttl, refusal)
                    raise
            else:
                self._refused.pop(user_id, None)
                return

    async def _place(self, user_id: str, amount: int) -> _Lease:
        hold_id = f"lease:{self.process_id}:{next(self._numbers)}"
        now = self.clock()
        expires_at = now + self.ttl
        await self._call(
            self.ledger.place_hold,
            user_id,
            hold_id,
            amount,
            expires_at=expires_at,
            key=f"{hold_id}:place",
            reason="proxy lease",
        )
        lease = _Lease(hold_id, amount, expires_at, expires_at - self.margin, now)
        await self._register(user_id, lease)
        return lease

    async def _register(self, user_id: str, lease: _Lease) -> None:
        """Make the lease known to recovery (retried by ``settle`` until it is)."""
        if self.tally is None:
            lease.registered = True
            return
        entry = LeaseEntry(
            lease.hold_id, user_id, self.process_id, lease.usable_until, lease.expires_at
        )
        usable_for = max(lease.usable_until - self.clock(), timedelta(0))
        while lease.write is not None and not lease.write.done():  # earlier adds applied first
            with contextlib.suppress(Exception):
                await asyncio.shield(lease.write)
        try:  # the tally restarts from the spend in memory (Redis may have lost it)
            lease.registered = await self.tally.register(entry, usable_for, lease.spent)
        except Exception:
            log.warning("proxy lease %s not registered", lease.hold_id, exc_info=True)

    def _retire(self, user_id: str) -> None:
        """Stop spending from the user's lease; ``_settle_all`` captures its rest and releases."""
        self._retiring.append((user_id, self._leases.pop(user_id)))

    async def _settle_all(self, only_user: str | None = None) -> None:
        """Settle concurrently, so the ledger's group committer batches the commands."""
        if self.tally is not None:
            unknown = [(u, lease) for u, lease in self._leases.items() if not lease.registered]
            await asyncio.gather(*(self._register(u, lease) for u, lease in unknown))
        work = [
            self._settle_one(user_id, lease, release=True)
            for user_id, lease in self._retiring
            if only_user is None or user_id == only_user
        ]
        if only_user is None:
            work += [
                self._settle_one(user_id, lease, release=False)
                for user_id, lease in self._leases.items()
            ]
        await asyncio.gather(*work)

    async def _settle_one(self, user_id: str, lease: _Lease, *, release: bool) -> None:
        """Capture the lease's unsettled spend (and release it); failures are retried later."""
        async with lease.lock:
            try:
                if lease.pending is not None:  # outcome unknown: resend it with the same key
                    await self._capture(user_id, lease, *lease.pending)
                if lease.spent > lease.settled:
                    key = capture_key(lease.hold_id, lease.settled)
                    await self._capture(user_id, lease, key, lease.spent - lease.settled)
                if release and not lease.released:
                    await self._call(
                        self.ledger.release, user_id, lease.hold_id, key=release_key(lease.hold_id)
                    )
                    lease.released = True
                    if self.tally is not None:
                        await self.tally.forget(lease.hold_id)
            except IdempotencyConflictError:  # recovery captured from this position: catch up
                await self._catch_up(user_id, lease)
                return
            except HoldNotFoundError:
                lost = lease.spent - lease.settled
                if lost:
                    log.warning(
                        "proxy lease %s of %s is gone (expired); %d micro-USD of spend not charged",
                        lease.hold_id,
                        user_id,
                        lost,
                    )
                lease.released = True
                if self._leases.get(user_id) is lease:
                    del self._leases[user_id]
            except Exception as exc:  # unknown outcome: the idempotency keys make a retry safe
                level = logging.WARNING if isinstance(exc, DomainError) else logging.ERROR
                log.log(
                    level,
                    "settling proxy lease %s of %s failed",
                    lease.hold_id,
                    user_id,
                    exc_info=True,
                )
                return
        if lease.released and (user_id, lease) in self._retiring:
            self._retiring.remove((user_id, lease))

    async def _catch_up(self, user_id: str, lease: _Lease) -> None:
        """Take the hold's captured total from the ledger (another process captured some of
        this lease's tally: see docs/adr/0029); the next settle goes on from there."""
        try:
            view = await self._call(self.ledger.account, user_id)
        except Exception:
            log.warning("proxy lease %s: catching up failed", lease.hold_id, exc_info=True)
            return
        hold = next((h for h in view.holds if h.hold_id == lease.hold_id), None)
        lease.pending = None
        if hold is None:  # released by recovery: nothing more can be captured from it
            lease.released = True
            if self._leases.get(user_id) is lease:
                del self._leases[user_id]
            if (user_id, lease) in self._retiring:
                self._retiring.remove((user_id, lease))
            return
        log.info("proxy lease %s: %d captured by another process", lease.hold_id, hold.captured)
        lease.settled = hold.captured

    async def _capture(self, user_id: str, lease: _Lease, key: str, amount: int) -> None:
        lease.pending = (key, amount)
        await self._call(
            self.ledger.capture, user_id, lease.hold_id, amount, key=key, reason="proxy requests"
        )
        lease.pending = None
        lease.settled += amount


def _room(refusal: Refusal) -> int:
    """The largest hold the refusal says would have been accepted (micro-USD, may be ≤ 0)."""
    if isinstance(refusal, InsufficientCreditsError):
        return int(refusal.details["available"]) + int(refusal.details["cap"])
    return min(int(v["limit"]) - int(v["spent"]) - int(v["held"]) for v in refusal.violations)


def unique_process_id(prefix: str = "proxy") -> str:
    """A process id unique per process start: hold ids must never be reused after a restart."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
