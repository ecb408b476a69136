"""Capturing what a dead (or stuck) process spent from its proxy credit leases.

Run by the elected hold sweep (``HoldSweep``), before it expires due holds. For each lease in
the Redis fee tally whose owner is dead (its liveness mark gone, and not renewed for
``CONFIRM`` since recovery first found it gone), or whose owner is alive but kept it ``GRACE``
past its last moment of use (its usable mark expired): capture the tallied amount not yet
captured, then release the hold. Both are decided on Redis's clock (key expiries, ``TIME``),
never on this process's or the owner's. The capture goes through the ledger's own
capture command with the key ``capture_key(hold_id, captured so far)``, the same key the owner
would use from that position: whichever of the two comes first is applied, the other is
refused (or is a replay), so nothing is captured twice (docs/adr/0029-durable-proxy-fee-tally.md).
"""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta

from domain.errors import AccountNotFoundError, HoldNotFoundError
from domain.ports.fee_tally import LeaseEntry, capture_key, release_key
from domain.services.ledger import LedgerService
from infrastructure.proxy.fee_tally import GRACE, RedisFeeTally

log = logging.getLogger(__name__)

__all__ = ["CONFIRM", "GRACE", "LeaseRecovery"]

# an owner's liveness mark stays gone this long (Redis time) before its leases are taken: a
# live owner beats every 2 s and so clears it, e.g. after Redis was down or lost its data
CONFIRM = timedelta(seconds=10)


class LeaseRecovery:
    def __init__(
        self, ledger: LedgerService, tally: RedisFeeTally, *, confirm: timedelta = CONFIRM
    ) -> None:
        self.ledger = ledger
        self.tally = tally
        self.confirm = confirm

    def recover_once(self) -> int:
        """Settle every abandoned lease; returns the micro-USD captured."""
        entries = self.tally.entries()
        if not entries:
            return 0
        owners = {e.process_id for e in entries}
        alive = self.tally.alive(owners)
        gone_for = self.tally.missing_for(owners - alive) if owners - alive else {}
        dead = {p for p, secs in gone_for.items() if secs >= self.confirm.total_seconds()}
        usable = self.tally.usable([e.hold_id for e in entries if e.process_id in alive])
        captured = 0
        for entry in entries:
            if entry.process_id in alive and entry.hold_id in usable:
                continue
            if entry.process_id not in alive and entry.process_id not in dead:
                continue  # seen gone only now (or lately): it may be alive after all
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
