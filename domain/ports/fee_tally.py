"""The port for a durable tally of proxy fees spent from each credit lease.

``ProxyLeases`` spends fees in memory and captures them in batches; a tally kept outside the
process (Redis in production) lets another process capture what a dead one spent
(``infrastructure/proxy/lease_recovery.py``). See docs/adr/0029-durable-proxy-fee-tally.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class LeaseEntry:
    """What recovery needs to know about one lease (registered when its hold is placed)."""

    hold_id: str
    user_id: str
    process_id: str
    usable_until: datetime  # the owner spends nothing from it after this
    expires_at: datetime


class FeeTally(Protocol):
    """Spent micro-USD per lease, kept where the owner's death cannot take it."""

    def add(self, hold_id: str, amount: int) -> asyncio.Future[bool]:
        """Add ``amount`` (negative: a refund) to the lease's tally, batched with the other
        adds of this event-loop tick. The future says True once stored, False if the write
        failed (it never raises)."""
        ...

    async def register(self, entry: LeaseEntry, usable_for: timedelta, spent: int) -> bool:
        """Make the lease known to recovery; True if stored. ``usable_for``: how long from
        now the owner may spend from it (a duration: the tally's own clock counts it down);
        ``spent``: the lease's tally from now on (every earlier ``add`` already stored)."""
        ...

    async def registered(self, hold_ids: list[str]) -> set[str]:
        """Which of ``hold_ids`` the tally still knows (it may lose them: a restart)."""
        ...

    async def forget(self, hold_id: str) -> None:
        """The lease is settled and released: recovery has nothing left to do with it."""
        ...

    async def beat(self, process_id: str) -> None:
        """Say that ``process_id`` is alive (its usable leases are not recovered meanwhile)."""
        ...

    async def aclose(self) -> None: ...


def capture_key(hold_id: str, position: int) -> str:
    """The idempotency key of the capture that moves a lease's captured total on from
    ``position``: one key per position, so two processes capturing from the same position
    cannot both succeed (the ledger refuses a key reused with another amount)."""
    return f"{hold_id}:capture:from:{position}"


def release_key(hold_id: str) -> str:
    return f"{hold_id}:release"
