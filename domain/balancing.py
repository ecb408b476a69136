"""The proxy's load balancer: pure, in-process choice of a backend instance (no I/O).

One ``LoadTracker`` per server process holds the live load of every instance (keyed by
``instance_id``) for all users; the strategy is only a parameter of ``pick``, so switching
strategy keeps the tracked load. It is meant for one asyncio event loop: no locks, every
method is O(n) in the backends passed at worst, and nothing logs.

Rules chosen here:

* **Eligibility.** ``pick`` chooses among ``backends`` that are neither in ``exclude`` nor
  ejected. ``exclude`` is strict: an excluded backend is never returned, and if every backend
  is excluded (or there are none) ``NoBackendError`` is raised.
* **Never eject all (rule applied at pick time).** If every non-excluded backend is ejected,
  the strategy runs over all of them as if none were ejected, so ejection never makes ``pick``
  raise. Ejections are always recorded; only ``pick`` falls back.
* **Outlier ejection.** ``eject_after`` consecutive failures eject an instance for
  ``eject_for`` seconds. When it returns it is on probation: a failure before its first
  success re-ejects it at once (one failure), a success ends probation and resets the count.
  Outcomes reported while an instance is ejected (requests that were already in flight, or
  fallback traffic) update its counters but neither extend nor lift the ejection.
* **Latency.** Only successful responses feed the EWMA: a fast connect error must not make a
  broken instance look fast. Usage counters (``drain``) count every finished request.
* **Retry budget.** ``budget = max(1, int(active * retry_ratio))`` where ``active`` is every
  request in flight across all instances; ``try_retry`` grants a retry while fewer than
  ``budget`` retries are in flight, so retries in flight never exceed 20 % (by default) of the
  active requests, yet a request alone may always retry once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from math import isfinite
from types import TracebackType

from domain.errors import DomainError, InvalidArgumentError

ROUND_ROBIN = "round_robin"
EQUAL_WEIGHTED = "equal_weighted"
WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
LEAST_CONNECTIONS = "least_connections"
LEAST_RESPONSE_TIME = "least_response_time"
STRATEGIES: tuple[str, ...] = (
    ROUND_ROBIN,
    EQUAL_WEIGHTED,
    WEIGHTED_ROUND_ROBIN,
    LEAST_CONNECTIONS,
    LEAST_RESPONSE_TIME,
)

_USD = 1_000_000  # micro-USD in one dollar
_MAX_LATENCY_MS = 3_600_000.0  # an hour: anything above (or non-finite) is clamped
_NEVER = float("inf")


class UnknownStrategyError(DomainError):
    """The strategy name is not one of ``STRATEGIES``."""

    status = 400
    title = "Unknown strategy"

    def __init__(self, name: str) -> None:
        super().__init__(
            f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}",
            strategy=name,
            valid=list(STRATEGIES),
        )


class NoBackendError(DomainError):
    """No instance can take the request: none given, or every one is excluded."""

    status = 503
    title = "No instance available"


def check_strategy(name: str) -> str:
    """Return ``name`` if it is a known strategy, else raise ``UnknownStrategyError``."""
    if name not in STRATEGIES:
        raise UnknownStrategyError(name)
    return name


def backend_weight(vram_gb: float, price_per_hour: int) -> int:
    """Smooth-WRR weight: whole GB of VRAM divided by ``1 + price in USD/h``, rounded.

    ``weight = max(1, floor(G / (1 + P) + 1/2))`` with ``G = round(vram_gb)`` and ``P`` the
    price in USD per hour, computed in integers. Capacity dominates and cheaper is better:
    80 GB at $2/h -> 27, 24 GB at $0.40/h -> 17, 24 GB free -> 24. It is deterministic and
    monotone: more VRAM never lowers the weight, a higher price never raises it.
    """
    gb = round(vram_gb)
    divisor = _USD + price_per_hour
    return max(1, (2 * gb * _USD + divisor) // (2 * divisor))


@dataclass(frozen=True)
class Backend:
    """A running instance that can serve requests (``instance_id`` is unique in a pool)."""

    instance_id: str
    provider: str
    vram_gb: float  # total VRAM of the instance
    price_per_hour: int  # micro-USD per hour for the whole instance

    def __post_init__(self) -> None:
        if not (isfinite(self.vram_gb) and self.vram_gb >= 0):
            raise InvalidArgumentError("vram_gb must be finite and >= 0", field="vram_gb")
        if self.price_per_hour < 0:
            raise InvalidArgumentError("price_per_hour must be >= 0", field="price_per_hour")

    @cached_property
    def weight(self) -> int:
        """This backend's smooth-WRR weight (see ``backend_weight``)."""
        return backend_weight(self.vram_gb, self.price_per_hour)


@dataclass(frozen=True)
class InstanceLoad:
    """A snapshot of one instance's live figures (``ewma_ms`` is 0.0 until measured)."""

    active: int
    ewma_ms: float
    consecutive_failures: int
    ejected: bool
    ejected_for_s: float  # seconds of ejection left (0.0 when not ejected)
    total_requests: int  # finished requests, lifetime in this process
    total_errors: int


@dataclass(frozen=True)
class UsageCounts:
    """Finished requests, failures and their summed latency since the last drain."""

    requests: int
    errors: int
    latency_ms_sum: float


@dataclass(slots=True)
class _Load:
    active: int = 0
    ewma_ms: float = 0.0
    measured: bool = False
    consecutive_failures: int = 0
    ejected_until: float = 0.0  # monotonic seconds; in the past = not ejected
    probation: bool = False  # back from ejection, no success yet
    total_requests: int = 0
    total_errors: int = 0
    requests: int = 0  # since the last drain
    errors: int = 0
    latency_ms_sum: float = 0.0


_Chooser = Callable[[Sequence[Backend], str, Collection[str]], Backend | None]


class Tracked:
    """One request on one instance: ``done`` reports it once (later calls are ignored).

    As a context manager it reports ``ok`` = no exception, timed by the tracker's clock,
    unless ``done`` was called inside the block.
    """

    __slots__ = ("_finished", "_started_at", "_tracker", "instance_id")

    def __init__(self, tracker: LoadTracker, instance_id: str) -> None:
        self._tracker = tracker
        self.instance_id = instance_id
        self._finished = False
        tracker.started(instance_id)
        self._started_at = tracker.clock()

    def done(self, latency_ms: float | None = None, ok: bool = True) -> None:
        """Report the outcome; without ``latency_ms`` the time since ``track`` is used."""
        if self._finished:
            return
        self._finished = True
        if latency_ms is None:
            latency_ms = (self._tracker.clock() - self._started_at) * 1000.0
        self._tracker.finished(self.instance_id, latency_ms=latency_ms, ok=ok)

    def __enter__(self) -> Tracked:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.done(ok=exc_type is None)


class LoadTracker:
    """Live load per instance, outlier ejection, the retry budget and per-user cursors."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        eject_after: int = 5,
        eject_for: float = 30.0,
        alpha: float = 0.3,
        retry_ratio: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        if eject_after < 1:
            raise InvalidArgumentError("eject_after must be >= 1", field="eject_after")
        if not (isfinite(eject_for) and eject_for >= 0):
            raise InvalidArgumentError("eject_for must be finite and >= 0", field="eject_for")
        if not 0.0 < alpha <= 1.0:
            raise InvalidArgumentError("alpha must be in (0, 1]", field="alpha")
        if not (isfinite(retry_ratio) and retry_ratio >= 0):
            raise InvalidArgumentError("retry_ratio must be >= 0", field="retry_ratio")
        self.clock = clock
        self.eject_after = eject_after
        self.eject_for = eject_for
        self.alpha = alpha
        self.retry_ratio = retry_ratio
        # Not for security: only spreads load (power of two choices).
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._loads: dict[str, _Load] = {}
        self._ejected: dict[str, float] = {}  # instance_id -> ejected_until (index of _loads)
        self._next_return = _NEVER  # the earliest ejected_until in _ejected
        self._cursors: dict[str, int] = {}  # key -> next position in the backends list
        self._wrr: dict[str, dict[str, int]] = {}  # key -> instance_id -> current weight
        self._pending: dict[str, UsageCounts] = {}  # undrained usage of forgotten instances
        self._active_total = 0
        self._retries = 0
        self._choosers: dict[str, _Chooser] = {
            ROUND_ROBIN: self._round_robin,
            EQUAL_WEIGHTED: self._equal_weighted,
            WEIGHTED_ROUND_ROBIN: self._weighted_round_robin,
            LEAST_CONNECTIONS: self._least_connections,
            LEAST_RESPONSE_TIME: self._least_response_time,
        }

    # -- choosing ---------------------------------------------------------------------------

    def pick(
        self,
        strategy: str,
        backends: Sequence[Backend],
        *,
        key: str,
        exclude: AbstractSet[str] = frozenset(),
    ) -> Backend:
        """Choose one backend for user ``key`` (see the module docstring for the rules).

        Pass ``backends`` in a stable order: round-robin cursors are positions in it.
        """
        choose = self._choosers.get(strategy)
        if choose is None:
            raise UnknownStrategyError(strategy)
        if not backends:
            raise NoBackendError("no instance is running for this request")
        skip: Collection[str] = exclude
        ejected = self._ejected
        if ejected:
            now = self.clock()
            if now >= self._next_return:
                self._prune_ejected(now)
            if ejected:
                skip = {*exclude, *ejected} if exclude else ejected
        chosen = choose(backends, key, skip)
        if chosen is None and skip is not exclude:
            chosen = choose(backends, key, exclude)  # all ejected: never leave the pool empty
        if chosen is None:
            raise NoBackendError("every instance was excluded", excluded=sorted(exclude))
        return chosen

    def _prune_ejected(self, now: float) -> None:
        ejected = self._ejected
        for iid in [iid for iid, until in ejected.items() if until <= now]:
            del ejected[iid]
        self._next_return = min(ejected.values(), default=_NEVER)

    def _start(self, key: str, n: int) -> int:
        return self._cursors.get(key, 0) % n

    def _round_robin(
        self, backends: Sequence[Backend], key: str, skip: Collection[str]
    ) -> Backend | None:
        """The next backend after the user's previous pick, in the order given."""
        n = len(backends)
        start = self._start(key, n)
        for i in chain(range(start, n), range(start)):
            backend = backends[i]
            if backend.instance_id not in skip:
                self._cursors[key] = i + 1
                return backend
        return None

    def _equal_weighted(
        self, backends: Sequence[Backend], key: str, skip: Collection[str]
    ) -> Backend | None:
        """Fewest requests so far in this process (finished + in flight); ties: round robin.

        Totals are lifetime, so an instance that joins late takes the traffic until it
        catches up with the others.
        """
        n = len(backends)
        start = self._start(key, n)
        loads = self._loads
        best = -1
        best_score = 0
        for i in chain(range(start, n), range(start)):
            iid = backends[i].instance_id
            if iid in skip:
                continue
            load = loads.get(iid)
            score = 0 if load is None else load.total_requests + load.active
            if best < 0 or score < best_score:
                best, best_score = i, score
                if score == 0:
                    break
        if best < 0:
            return None
        self._cursors[key] = best + 1
        return backends[best]

    def _weighted_round_robin(
        self, backends: Sequence[Backend], key: str, skip: Collection[str]
    ) -> Backend | None:
        """Smooth weighted round robin (nginx), per user: interleaved, not clumped.

        Each eligible backend's current weight grows by its weight; the largest (first in
        order on ties) is picked and loses the total of the eligible weights.
        """
        current = self._wrr.get(key)
        if current is None:
            current = self._wrr[key] = {}
        total = 0
        best: Backend | None = None
        best_current = 0
        for backend in backends:
            iid = backend.instance_id
            if iid in skip:
                continue
            weight = backend.weight
            value = current.get(iid, 0) + weight
            current[iid] = value
            total += weight
            if best is None or value > best_current:
                best, best_current = backend, value
        if best is not None:
            current[best.instance_id] = best_current - total
        return best

    def _least_connections(
        self, backends: Sequence[Backend], _key: str, skip: Collection[str]
    ) -> Backend | None:
        """Power of two choices: of two distinct random eligible backends, the less active.

        Ties go to the first one sampled; with one eligible backend it is taken.
        """
        candidates = [b for b in backends if b.instance_id not in skip] if skip else backends
        n = len(candidates)
        if n <= 1:
            return candidates[0] if n else None
        randrange = self._rng.randrange
        i = randrange(n)
        j = randrange(n - 1)
        if j >= i:
            j += 1
        first, second = candidates[i], candidates[j]
        loads = self._loads
        load = loads.get(first.instance_id)
        active_first = 0 if load is None else load.active
        load = loads.get(second.instance_id)
        active_second = 0 if load is None else load.active
        return second if active_second < active_first else first

    def _least_response_time(
        self, backends: Sequence[Backend], key: str, skip: Collection[str]
    ) -> Backend | None:
        """Lowest ``ewma_ms * (active + 1)``; then fewer active; then round robin.

        A backend never measured scores 0, so new instances are tried first.
        """
        n = len(backends)
        start = self._start(key, n)
        loads = self._loads
        best = -1
        best_score = 0.0
        best_active = 0
        for i in chain(range(start, n), range(start)):
            iid = backends[i].instance_id
            if iid in skip:
                continue
            load = loads.get(iid)
            if load is None:
                score, active = 0.0, 0
            else:
                active = load.active
                score = load.ewma_ms * (active + 1)
            if best < 0 or score < best_score or (score == best_score and active < best_active):
                best, best_score, best_active = i, score, active
                if score == 0.0 and active == 0:
                    break
        if best < 0:
            return None
        self._cursors[key] = best + 1
        return backends[best]

    # -- reporting --------------------------------------------------------------------------

    def _load(self, instance_id: str) -> _Load:
        load = self._loads.get(instance_id)
        if load is None:
            load = self._loads[instance_id] = _Load()
        return load

    def started(self, instance_id: str) -> None:
        """A request was sent to the instance."""
        self._load(instance_id).active += 1
        self._active_total += 1

    def finished(self, instance_id: str, *, latency_ms: float, ok: bool) -> None:
        """The request ended; ``ok=False`` for connect errors, timeouts, 502/503/504."""
        load = self._load(instance_id)
        if load.active > 0:
            load.active -= 1
            self._active_total -= 1
        if not 0.0 <= latency_ms <= _MAX_LATENCY_MS:  # negative, NaN, huge or infinite
            latency_ms = _MAX_LATENCY_MS if latency_ms > _MAX_LATENCY_MS else 0.0
        load.total_requests += 1
        load.requests += 1
        load.latency_ms_sum += latency_ms
        if ok:
            if load.measured:
                load.ewma_ms += self.alpha * (latency_ms - load.ewma_ms)
            else:
                load.ewma_ms, load.measured = latency_ms, True
            load.consecutive_failures = 0
            if load.probation and load.ejected_until <= self.clock():
                load.probation = False  # a success after the return ends probation
            return
        load.total_errors += 1
        load.errors += 1
        load.consecutive_failures += 1
        now = self.clock()
        if load.ejected_until > now:
            return  # already ejected: neither extended nor lifted
        if load.probation or load.consecutive_failures >= self.eject_after:
            load.ejected_until = now + self.eject_for
            load.probation = True
            self._ejected[instance_id] = load.ejected_until
            self._next_return = min(self._next_return, load.ejected_until)

    def track(self, instance_id: str) -> Tracked:
        """``started`` now; the returned object's ``done`` calls ``finished`` once."""
        return Tracked(self, instance_id)

    def forget(self, instance_id: str) -> None:
        """Drop an instance that is gone; its undrained usage is kept for the next drain."""
        load = self._loads.pop(instance_id, None)
        if self._ejected.pop(instance_id, None) is not None:
            self._prune_ejected(self.clock())
        for current in self._wrr.values():
            current.pop(instance_id, None)
        if load is None:
            return
        self._active_total -= load.active
        if load.requests:
            self._pending[instance_id] = _merge(
                self._pending.get(instance_id),
                UsageCounts(load.requests, load.errors, load.latency_ms_sum),
            )

    # -- retry budget -----------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Requests in flight across all instances."""
        return self._active_total

    @property
    def retries_in_flight(self) -> int:
        return self._retries

    def try_retry(self) -> bool:
        """Take a retry from the budget ``max(1, int(active * retry_ratio))``, if one is left."""
        if self._retries < max(1, int(self._active_total * self.retry_ratio)):
            self._retries += 1
            return True
        return False

    def retry_done(self) -> None:
        """A retry granted by ``try_retry`` finished."""
        if self._retries > 0:
            self._retries -= 1

    # -- reading ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, InstanceLoad]:
        """Live figures of every instance seen since it was last forgotten."""
        now = self.clock()
        return {
            iid: InstanceLoad(
                active=load.active,
                ewma_ms=load.ewma_ms,
                consecutive_failures=load.consecutive_failures,
                ejected=load.ejected_until > now,
                ejected_for_s=max(0.0, load.ejected_until - now),
                total_requests=load.total_requests,
                total_errors=load.total_errors,
            )
            for iid, load in self._loads.items()
        }

    def drain(self) -> dict[str, UsageCounts]:
        """Usage since the last drain, for instances that finished requests; resets it."""
        usage = self._pending
        self._pending = {}
        for iid, load in self._loads.items():
            if load.requests:
                usage[iid] = _merge(
                    usage.get(iid), UsageCounts(load.requests, load.errors, load.latency_ms_sum)
                )
                load.requests = load.errors = 0
                load.latency_ms_sum = 0.0
        return usage


def _merge(old: UsageCounts | None, new: UsageCounts) -> UsageCounts:
    if old is None:
        return new
    return UsageCounts(
        old.requests + new.requests,
        old.errors + new.errors,
        old.latency_ms_sum + new.latency_ms_sum,
    )
