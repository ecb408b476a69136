"""Capturing what a dead (or stuck) process spent from its proxy credit leases.

Run by the elected hold sweep (``HoldSweep``), before it expires due holds. For each lease in
the Redis fee tally whose owner no longer marks itself alive, or whose owner stopped spending
from it (``usable_until``) more than ``GRACE`` ago without releasing it: capture the tallied
amount not yet captured, then release the hold. The capture goes through the ledger's own
capture command with the key ``capture_key(hold_id, captured so far)``, the same key the owner
would use from that position: whichever of the two comes first is applied, the other is
refused (or is a replay), so nothing is captured twice (docs/adr/0029-durable-proxy-fee-tally.md).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta

from domain.errors import AccountNotFoundError, HoldNotFoundError
from domain.ports import Clock
from domain.services.fee_tally import LeaseEntry, capture_key, release_key
from domain.services.ledger import LedgerService
from infrastructure.proxy.fee_tally import RedisFeeTally

log = logging.getLogger(__name__)

GRACE = timedelta(seconds=10)  # an owner alive but not settling: its lease is left this long


class LeaseRecovery:
    def __init__(self, ledger: LedgerService, tally: RedisFeeTally, *, clock: Clock) -> None:
        self.ledger = ledger
        self.tally = tally
        self.clock = clock

    def recover_once(self) -> int:
        """Settle every abandoned lease; returns the micro-USD captured."""
        entries = self.tally.entries()
        if not entries:
            return 0
        alive = self.tally.alive({e.process_id for e in entries})
        now = self.clock()
        captured = 0
        for entry in entries:
            if entry.process_id in alive and now < entry.usable_until + GRACE:
                continue
            try:
                captured += self.settle(entry)
            except Exception as exc:  # retried next round; the keys make that safe
                log.warning("recovering proxy lease %s failed: %s", entry.hold_id, exc)
        return captured

    def settle(self, entry: LeaseEntry) -> int:
        """Capture the lease's tallied spend not yet captured, release it, forget it."""
        tallied = self.tally.tallied(entry.hold_id)
        try:
            view = self.ledger.account(entry.user_id)
        except AccountNotFoundError:
            self.tally.drop(entry.hold_id)
            return 0
        hold = next((h for h in view.holds if h.hold_id == entry.hold_id), None)
        if hold is None:  # released by its owner (settled), or expired
            if view.as_of >= entry.expires_at:
                log.warning(
                    "proxy lease %s of %s expired before recovery; tally %d micro-USD",
                    entry.hold_id,
                    entry.user_id,
                    tallied,
                )
            self.tally.drop(entry.hold_id)
            return 0
        amount = min(tallied, hold.amount) - hold.captured
        if tallied > hold.amount:
            log.warning("proxy lease %s: tally %d over its hold", entry.hold_id, tallied)
        if amount > 0:
            self.ledger.capture(
                entry.user_id,
                entry.hold_id,
                amount,
                key=capture_key(entry.hold_id, hold.captured),
                reason="proxy requests (recovered)",
            )
        with contextlib.suppress(HoldNotFoundError):  # expired meanwhile: freed all the same
            self.ledger.release(entry.user_id, entry.hold_id, key=release_key(entry.hold_id))
        self.tally.drop(entry.hold_id)
        log.info(
            "recovered proxy lease %s of %s (process %s): %d micro-USD captured",
            entry.hold_id,
            entry.user_id,
            entry.process_id,
            max(amount, 0),
        )
        return max(amount, 0)
