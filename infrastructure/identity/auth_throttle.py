"""Failed API-key attempts, limited per key id and per client address; argon2 bounded.

Every API-key check whose key is not already verified in this process costs an argon2 hash.
Failures are counted in fixed windows per key id and per client address (in Redis when it is
configured, so every replica sees the same counts; in-process otherwise). A key that would
need hashing is refused at once with 429 and ``Retry-After``, without reading its row or
running argon2, when its address is over the address limit, or when its key id is over the
key limit and the address has failed before in this window.

So a flood of wrong secrets against a key id cannot lock its owner out: a key this process
has verified (the SHA-256 cache in ``ApiKeyStore``) always works, and from an address with
no failures the owner's key is still checked. A flooder pays at most one argon2 per address
per locked key id per window, and at most ``max_hashing`` argon2 checks run at once (an
attempt that gets no slot within ``HASH_WAIT_SECONDS`` is refused with 429 too).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from domain.errors import DomainError
from infrastructure.settings import Settings

HASH_WAIT_SECONDS = 2.0
_MAX_ENTRIES = 100_000


class TooManyAttemptsError(DomainError):
    status = 429
    title = "Too many failed attempts"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(f"{message}; retry after {retry_after} s", retry_after=retry_after)
        self.retry_after = retry_after


class FailureCounts(Protocol):
    local: bool  # counts live in this process (reading them needs no network)

    def read(self, subjects: list[str]) -> list[int]: ...
    def add(self, subjects: list[str]) -> None: ...


class MemoryFailureCounts:
    """Counts per fixed window, in this process (the embedded single-process set-up)."""

    local = True

    def __init__(self, window: int) -> None:
        self.window = window
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def read(self, subjects: list[str]) -> list[int]:
        now = int(time.time()) // self.window
        return [self._counts.get((s, now), 0) for s in subjects]

    def add(self, subjects: list[str]) -> None:
        now = int(time.time()) // self.window
        with self._lock:
            for subject in subjects:
                self._counts[(subject, now)] = self._counts.get((subject, now), 0) + 1
            if len(self._counts) > _MAX_ENTRIES:
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= now}


class RedisFailureCounts:
    """Counts per fixed window in Redis, shared by every replica (one round trip each)."""

    local = False

    def __init__(self, client: Any, window: int) -> None:
        self.client = client
        self.window = window

    def _key(self, subject: str) -> str:
        return f"gpuproxy:authfail:{subject}:{int(time.time()) // self.window}"

    def read(self, subjects: list[str]) -> list[int]:
        values = self.client.mget([self._key(s) for s in subjects])
        return [int(v) if v is not None else 0 for v in values]

    def add(self, subjects: list[str]) -> None:
        pipe = self.client.pipeline(transaction=True)
        for subject in subjects:
            key = self._key(subject)
            pipe.incr(key)
            pipe.expire(key, self.window * 2)
        pipe.execute()


class AuthThrottle:
    """The failure limits and the argon2 slots, shared by every door (``AuthService``)."""

    def __init__(
        self,
        counts: FailureCounts,
        *,
        per_key: int,
        per_address: int,
        window: int,
        max_hashing: int,
    ) -> None:
        self.counts = counts
        self.per_key = per_key
        self.per_address = per_address
        self.window = window
        self._slots = threading.BoundedSemaphore(max_hashing)

    @staticmethod
    def _subjects(key_id: str | None, address: str) -> list[str]:
        subjects = [f"key:{key_id}"] if key_id else []
        return subjects + ([f"ip:{address}"] if address else [])

    def retry_after(self) -> int:
        return max(1, self.window - int(time.time()) % self.window)

    def locked(self, key_id: str | None, address: str) -> bool:
        """True if the address is over its limit, or the key id is over its limit and the
        address (unknown counts as such) has failed before in this window."""
        subjects = self._subjects(key_id, address)
        if not subjects:
            return False
        counts = self.counts.read(subjects)
        key_failures = counts[0] if key_id else 0
        address_failures = counts[-1] if address else None
        if address_failures is not None and address_failures >= self.per_address:
            return True
        return key_failures >= self.per_key and address_failures != 0

    def locked_locally(self, key_id: str | None, address: str) -> bool:
        """``locked`` when the counts need no network round trip, else False."""
        return self.counts.local and self.locked(key_id, address)

    def check(self, key_id: str | None, address: str) -> None:
        if self.locked(key_id, address):
            raise TooManyAttemptsError(
                "Too many failed API-key attempts", retry_after=self.retry_after()
            )

    def failed(self, key_id: str | None, address: str) -> None:
        subjects = self._subjects(key_id, address)
        if subjects:
            self.counts.add(subjects)

    @contextmanager
    def hashing(self, key_id: str | None, address: str) -> Iterator[None]:
        """One argon2 slot, with the limits checked again once it is held."""
        if not self._slots.acquire(timeout=HASH_WAIT_SECONDS):
            raise TooManyAttemptsError("Too many API-key checks in progress", retry_after=1)
        try:
            self.check(key_id, address)
            yield
        finally:
            self._slots.release()

    def gate(self, key_id: str | None, address: str) -> Gate:
        return Gate(self, key_id, address)


class Gate:
    """One attempt's view of the throttle, handed to ``ApiKeyStore.verify``."""

    def __init__(self, throttle: AuthThrottle, key_id: str | None, address: str) -> None:
        self.throttle = throttle
        self.key_id = key_id
        self.address = address

    def check(self) -> None:
        self.throttle.check(self.key_id, self.address)

    def hashing(self) -> AbstractContextManager[None]:
        return self.throttle.hashing(self.key_id, self.address)


def open_throttle(settings: Settings, redis: Any | None) -> AuthThrottle:
    """The throttle the settings ask for: counts in Redis when configured, else in-process."""
    window = settings.auth.failure_window_seconds
    counts: FailureCounts = (
        RedisFailureCounts(redis, window) if redis is not None else MemoryFailureCounts(window)
    )
    return AuthThrottle(
        counts,
        per_key=settings.auth.failures_per_key,
        per_address=settings.auth.failures_per_address,
        window=window,
        max_hashing=settings.auth.max_concurrent_hashes,
    )
