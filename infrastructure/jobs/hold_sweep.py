"""The hold sweep: expires holds past their expiry on accounts nobody touches.

Holds expire as events (``HoldExpired``) only when a command runs on their account; without
this job an idle account keeps a dead hold in its state and in the read models. Every
``HOLD_SWEEP_SECONDS`` the elected process reads the ``holds`` read model for accounts with
a live hold past its expiry (it only says *where to look*) and has each account's aggregate
expire what is due (``LedgerService.expire_due``): the aggregate decides. An expired hold
therefore leaves the balances within one sweep (plus projection lag).

With Redis, each sweep first settles the proxy credit leases of dead processes
(``LeaseRecovery``: their tallied fees are captured before the holds can expire).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from uuid import UUID

from domain.errors import DomainError
from domain.ports.clock import Clock
from domain.services.ledger import LedgerService
from infrastructure.db.sql import Database
from infrastructure.jobs.election import Election
from infrastructure.proxy.lease_recovery import LeaseRecovery
from projections.base import to_micros

log = logging.getLogger(__name__)

DUE_SQL = (
    "SELECT DISTINCT account_id FROM holds WHERE live = 1 AND expires_at <= ? "
    "AND account_id > ? ORDER BY account_id LIMIT ?"
)


class HoldSweep:
    def __init__(
        self,
        ledger: LedgerService,
        db: Database,
        election: Election,
        *,
        interval: float,
        clock: Clock,
        page: int = 500,
        workers: int = 8,
        leases: LeaseRecovery | None = None,
    ) -> None:
        self.ledger = ledger
        self.db = db
        self.election = election
        self.interval = interval
        self.clock = clock
        self.page = page
        self.workers = workers
        self.leases = leases

    def due_accounts(self, after: str = "") -> list[str]:
        """Up to ``page`` accounts (after ``after``) that the read model says have due holds."""
        with self.db.read() as tx:
            rows = tx.fetchall(DUE_SQL, (to_micros(self.clock()), after, self.page))
        return [str(r[0]) for r in rows]

    def sweep_once(self) -> int:
        """One sweep if this process leads; returns how many holds were expired."""
        if not self.election.leading():
            return 0
        if self.leases is not None:
            try:
                self.leases.recover_once()
            except Exception:  # Redis unreachable: the holds stay until the next round
                log.exception("recovering proxy leases failed")
        expired, after = 0, ""
        with ThreadPoolExecutor(self.workers, thread_name_prefix="hold-sweep") as pool:
            while accounts := self.due_accounts(after):
                expired += sum(pool.map(self._expire, accounts))
                after = accounts[-1]
                if len(accounts) < self.page:
                    break
        if expired:
            log.info("hold sweep: %d holds expired", expired)
        return expired

    def _expire(self, account_id: str) -> int:
        try:
            return self.ledger.expire_due(UUID(account_id))
        except DomainError as exc:  # e.g. an account the read model knows and the log not
            log.warning("hold sweep: account %s: %s", account_id, exc)
            return 0

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await asyncio.to_thread(self.sweep_once)
                except Exception:
                    log.exception("hold sweep failed; retrying next round")
                await asyncio.sleep(self.interval)
        finally:
            self.election.close()
