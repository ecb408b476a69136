"""Bounded retries for the outside HTTP APIs (vast.ai, io.net, AfterDark, the chain node).

Each adapter decides what one try means (its errors, its idempotency); this module owns the
rest, once: how many tries, which statuses and exceptions may be tried again, the wait
before the next try (exponential backoff, optional jitter, at least the server's
``Retry-After`` up to a cap) and the injectable ``sleep``.

    policy = RetryPolicy(max_attempts=4, sleep=fake_sleep)
    result = await policy.run(one_try, on_retry=log_it)

``one_try(n)`` returns the result, raises a final error, or returns ``Retry(reason, give_up,
retry_after)``; after the last try ``give_up(n)`` is raised.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeVar

import httpx

__all__ = [
    "RETRY_EXCEPTIONS",
    "Backoff",
    "Retry",
    "RetryPolicy",
    "Sleep",
    "retry_after_seconds",
]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
RETRY_EXCEPTIONS: Final[tuple[type[BaseException], ...]] = (httpx.TransportError,)


@dataclass(frozen=True, slots=True)
class Backoff:
    """The wait before try ``n + 1``: ``min(max_s, base_s * 2 ** (n - 1))``, scaled by
    ``0.5 + 0.5 * jitter()`` when ``jitter`` is given, then at least the server's
    ``Retry-After`` (itself capped at ``retry_after_cap_s``)."""

    base_s: float = 0.5
    max_s: float = 8.0
    jitter: Callable[[], float] | None = random.random
    retry_after_cap_s: float = 8.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        delay = min(self.max_s, self.base_s * 2.0 ** (attempt - 1))
        if self.jitter is not None:
            delay *= 0.5 + 0.5 * self.jitter()
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_cap_s))
        return delay


@dataclass(frozen=True, slots=True)
class Retry:
    """A try that failed in a way that may succeed if tried again.

    ``give_up(attempts)``: the error raised when no try is left (raised ``from cause``).
    """

    reason: str
    give_up: Callable[[int], BaseException]
    retry_after: float | None = None
    cause: BaseException | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``max_attempts`` tries of one call, ``backoff`` between them via ``sleep``."""

    max_attempts: int = 4
    backoff: Backoff = field(default_factory=Backoff)
    sleep: Sleep = asyncio.sleep
    retry_statuses: frozenset[int] = frozenset({429, 502, 503, 504})
    retry_exceptions: tuple[type[BaseException], ...] = RETRY_EXCEPTIONS

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def retries_status(self, status: int) -> bool:
        return status in self.retry_statuses

    def retries_exception(self, exc: BaseException) -> bool:
        return isinstance(exc, self.retry_exceptions)

    async def run(
        self,
        one_try: Callable[[int], Awaitable[T | Retry]],
        *,
        on_retry: Callable[[int, Retry, float], None] | None = None,
        attempts_made: int = 0,
    ) -> T:
        """Call ``one_try(n)`` for n = attempts_made + 1, … until it returns a result.

        ``on_retry(n, retry, delay)`` is called before each wait (for the adapter's log).
        ``attempts_made``: tries of the same call already spent (they count to the bound).
        """
        attempt = attempts_made
        while True:
            attempt += 1
            outcome = await one_try(attempt)
            if not isinstance(outcome, Retry):
                return outcome
            if attempt >= self.max_attempts:
                raise outcome.give_up(attempt) from outcome.cause
            delay = self.backoff.delay(attempt, outcome.retry_after)
            if on_retry is not None:
                on_retry(attempt, outcome, delay)
            await self.sleep(delay)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent
    or unreadable, never negative."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)
