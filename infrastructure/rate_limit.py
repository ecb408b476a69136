"""Per-user request limits in fixed one-minute windows.

The Redis limiter does one atomic round trip per request (``INCR`` + ``EXPIRE`` in a
``MULTI`` transaction), so the count is exact across any number of server processes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol


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
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
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
