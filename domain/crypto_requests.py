"""OpenCryptoRequests: one user's crypto payment requests, to cap how many are open at once.

Each crypto request reserves an exact amount (``domain.crypto_amounts``) of which a size has
only ``TAG_UNITS``, so a few accounts starting requests without end could take them all. Each
request is recorded here in the same save as the request itself; ``admit`` refuses one more
while the user already has ``limit`` requests open (unpaid, before their deadline).

The id is derived from the user, so every replica finds the same aggregate: two requests of
one user at once conflict on its version, and the later one is retried on fresh state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError

OPEN_CRYPTO_REQUESTS_NAMESPACE = UUID("9c4e2a71-5b3d-4f8e-a1c6-7d2f0e9b8a53")


def open_crypto_requests_id(owner: str) -> UUID:
    return uuid5(OPEN_CRYPTO_REQUESTS_NAMESPACE, owner)


class TooManyOpenRequestsError(DomainError):
    """The user has as many crypto requests open as allowed."""

    status = 429
    title = "Too many open crypto payment requests"


class OpenCryptoRequests(Aggregate):
    @staticmethod
    def create_id(owner: str, **_: Any) -> UUID:
        return open_crypto_requests_id(owner)

    @event("Opened")
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.requests: dict[str, datetime] = {}  # payment id -> its deadline

    def open(self, now: datetime, is_open: Callable[[str], bool]) -> list[str]:
        """The requests still open: before their deadline and unpaid (``is_open``, asked of
        the payment), oldest deadline first."""
        live = sorted((until, pid) for pid, until in self.requests.items() if until > now)
        return [pid for _, pid in live if is_open(pid)]

    def admit(
        self,
        payment_id: str,
        *,
        until: datetime,
        now: datetime,
        limit: int,
        is_open: Callable[[str], bool],
    ) -> None:
        """Record a new request open until ``until``, unless ``limit`` are open already."""
        still_open = self.open(now, is_open)
        if len(still_open) >= limit:
            raise TooManyOpenRequestsError(
                f"{len(still_open)} crypto payment requests are open, the most allowed; pay "
                "one or wait until one expires before starting another",
                open=len(still_open),
                limit=limit,
                retry_after=max(1, int((self.requests[still_open[0]] - now).total_seconds())),
            )
        self._admitted(payment_id=payment_id, until=until, kept=still_open)

    @event("Admitted")
    def _admitted(self, payment_id: str, until: datetime, kept: list[str]) -> None:
        # requests no longer open are forgotten: the state stays bounded by the limit
        self.requests = {pid: self.requests[pid] for pid in kept}
        self.requests[payment_id] = until
