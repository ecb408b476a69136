"""Per-user request limits in fixed one-minute windows.

The Redis limiter does one atomic round trip per request (``INCR`` + ``EXPIRE`` in a
``MULTI`` transaction), so the count is exact across any number of server processes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

POLICY = "per-user"  # the one policy: requests per user per fixed one-minute window
WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateDecision:
    limit: int
    remaining: int
    reset: int  # epoch seconds when the window ends
    allowed: bool

    @property
    def retry_after(self) -> int:
        return max(1, self.reset - int(time.time()))

    def headers(self) -> dict[str, str]:
        """The legacy ``X-RateLimit-*`` trio (``X-RateLimit-Reset`` is an epoch time, in
        seconds) and the IETF draft's ``RateLimit-Policy``/``RateLimit`` structured fields
        (draft-ietf-httpapi-ratelimit-headers: quota ``q`` per window ``w`` seconds; ``r``
        requests remaining, ``t`` seconds until the window resets, like ``Retry-After``)."""
        seconds_left = max(0, self.reset - int(time.time()))
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
            "RateLimit-Policy": f'"{POLICY}";q={self.limit};w={WINDOW_SECONDS}',
            "RateLimit": f'"{POLICY}";r={self.remaining};t={seconds_left}',
        }


class RateLimiter(Protocol):
    def hit(self, subject: str) -> RateDecision: ...


def _decide(limit: int, count: int, window: int) -> RateDecision:
    return RateDecision(limit, max(0, limit - count), (window + 1) * 60, count <= limit)


class MemoryRateLimiter:
    """In-process limiter for the embedded single-process set-up."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def hit(self, subject: str) -> RateDecision:
        window = int(time.time()) // 60
        with self._lock:
            count = self._counts.get((subject, window), 0) + 1
            self._counts[(subject, window)] = count
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
        return _decide(self.per_minute, count, window)


class RedisRateLimiter:
    def __init__(self, client: Any, per_minute: int) -> None:
        self.client = client
        self.per_minute = per_minute

    def hit(self, subject: str) -> RateDecision:
        window = int(time.time()) // 60
        key = f"gpuproxy:ratelimit:{subject}:{window}"
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = pipe.execute()
        return _decide(self.per_minute, int(count), window)
