"""Background work for payments: reconcile open payments, start auto-renew payments, and
read the chain for crypto transfers.

Every step is idempotent (payment ids come from idempotency keys, transfers are applied once
by ``tx_hash:log_index``), so several server processes could run these loops at once; still
only the elected process runs them (``infrastructure.jobs.election``), so processors and the chain
node are asked once per interval, not once per worker and replica.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from domain.errors import DomainError
from domain.ports.payments import ChainReader, PaymentError, TokenTransfer
from domain.services.payments import PaymentRequest, PaymentService
from infrastructure.db.sql import Database
from infrastructure.jobs.election import Election, SoleProcess
from infrastructure.readmodels.queries.payments import PaymentQueries

log = logging.getLogger(__name__)
SCAN_CHUNK = 5_000  # blocks per pass
OPEN_STATES = frozenset({"initiated", "pending"})


@dataclass(frozen=True)
class CryptoWatch:
    reader: ChainReader
    network: str
    token: str
    receiving_address: str
    confirmations: int
    start_block: int | None = None  # None: start near the current head


class PaymentJobs:
    def __init__(
        self,
        payments: PaymentService,
        queries: PaymentQueries,
        db: Database,
        election: Election | None = None,
        *,
        reconcile_interval: float = 60.0,
        reconcile_age: float = 30.0,
        crypto: CryptoWatch | None = None,
        crypto_interval: float = 15.0,
    ) -> None:
        self.payments = payments
        self.queries = queries
        self.db = db
        self.election: Election = election or SoleProcess()
        self.reconcile_interval = reconcile_interval
        self.reconcile_age = reconcile_age
        self.crypto = crypto
        self.crypto_interval = crypto_interval

    def _now(self) -> float:
        """Epoch seconds by the service's clock (the one its events are stamped with)."""
        return self.payments.clock().timestamp()

    # ------------------------------------------------------------- reconcile

    async def reconcile_once(self) -> int:
        """Ask again about payments open for longer than ``reconcile_age``; returns how many."""
        cutoff = int((self._now() - self.reconcile_age) * 1_000_000)
        rows = await asyncio.to_thread(self.queries.open_payments, older_than=cutoff)
        done = 0
        for row in rows:
            try:
                payment = await asyncio.to_thread(self.payments.get, UUID(row.payment_id))
                after = await self.payments.reconcile(payment)
            except (DomainError, PaymentError) as exc:
                log.warning("reconcile %s: %s", row.payment_id, exc)
                continue
            done += after.state != payment.state
        return done

    # ------------------------------------------------------------ auto-renew

    async def auto_renew_once(self) -> int:
        """Start one payment per auto-renew trigger that has none yet."""
        since = int((self._now() - 7 * 86400) * 1_000_000)
        due = await asyncio.to_thread(self.queries.auto_renew_due, since=since)
        started = 0
        for item in due:
            processor, _, rest = item.payment_method.partition(":")
            kind, _, token = rest.partition(":")
            try:
                await self.payments.create(
                    PaymentRequest(
                        owner=item.user_id,
                        amount=item.amount,
                        currency="USD",
                        processor=processor,
                        method={"type": kind, "token": token},
                        key=f"auto-renew:{item.account_id}:{item.version}",
                        source="auto_renew",
                    )
                )
                started += 1
            except DomainError as exc:
                log.warning("auto-renew for %s: %s", item.user_id, exc)
        return started

    # ---------------------------------------------------------------- crypto

    async def scan_once(self) -> int:
        """Read confirmed transfers since the last pass; apply each to its payment."""
        watch = self.crypto
        if watch is None:
            return 0
        head = await watch.reader.block_number()
        confirmed = head - watch.confirmations + 1
        last = await asyncio.to_thread(self._last_block, watch)
        if last is None:
            last = (watch.start_block - 1) if watch.start_block is not None else confirmed - 1
            await asyncio.to_thread(self._save_block, watch.network, last)
        applied = 0
        while last < confirmed:
            upto = min(confirmed, last + SCAN_CHUNK)
            transfers = await watch.reader.transfers(
                watch.token, watch.receiving_address, last + 1, upto
            )
            for transfer in transfers:
                applied += await asyncio.to_thread(self._apply_transfer, watch, transfer)
            await asyncio.to_thread(self._save_block, watch.network, upto)
            last = upto
        for row in await asyncio.to_thread(self.queries.open_payments, older_than=2**62):
            if row.processor == "crypto" and row.expires_at and row.expires_at < self._now() * 1e6:
                await asyncio.to_thread(self.payments.expire, UUID(row.payment_id))
        return applied

    def _apply_transfer(self, watch: CryptoWatch, transfer: TokenTransfer) -> int:
        """Match a transfer to a payment, claim it (so a rescan matches it the same way), apply.

        The claim row is written before the payment is touched: after a crash, or when the
        same blocks are read again, the transfer goes to the payment it was first matched to,
        whose aggregate applies each transfer once.
        """
        ref = f"{transfer.tx_hash}:{transfer.log_index}"
        payment_id = self._claim(watch, transfer, ref)
        if not payment_id:
            log.warning(
                "crypto transfer %s from %s is credited to no payment", ref, transfer.sender
            )
            return 0
        kind, _ = self.payments.record_transfer(
            UUID(payment_id), ref, transfer.amount, block=transfer.block_number
        )
        if kind != "duplicate":
            with self.db.transaction() as tx:
                tx.execute("UPDATE crypto_transfers SET kind = ? WHERE ref = ?", (kind, ref))
        return 0 if kind == "duplicate" else 1

    def _claim(self, watch: CryptoWatch, transfer: TokenTransfer, ref: str) -> str:
        with self.db.transaction() as tx:
            row = tx.fetchone("SELECT payment_id FROM crypto_transfers WHERE ref = ?", (ref,))
            if row is not None:
                return str(row[0])
            payment_id, kind = self._match(watch, transfer)
            tx.execute(
                "INSERT INTO crypto_transfers "
                "(ref, network, sender, amount, block, payment_id, kind, seen_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    ref,
                    watch.network,
                    transfer.sender,
                    transfer.amount,
                    transfer.block_number,
                    payment_id,
                    kind,
                    int(self._now() * 1e6),
                ),
            )
        return payment_id

    def _match(self, watch: CryptoWatch, transfer: TokenTransfer) -> tuple[str, str]:
        """The payment a transfer pays: (payment id, "exact" or "claimed"), or ("", why not).

        Both answers come from aggregates. Each request has an amount of its own
        (``domain.crypto_amounts.ExactAmount``): a transfer of exactly that amount pays it,
        from whichever wallet ("exact"). Any other amount (a part payment, a rounded one)
        names only its sending wallet, and anyone can name any wallet in a request
        (``domain.crypto_wallets.NamedWallet``): it is credited only when every request naming
        that wallet that can still be paid (deadline + the late window) is one user's, to the
        oldest open one, else the newest ("claimed"). Requests of several users: "ambiguous",
        credited to no one and logged for an admin (a refund or a grant by hand).
        """
        exact = self.payments.paid_by_exact_amount(watch.network, transfer.amount)
        if exact is not None:
            return exact, "exact"
        payment_id, kind = self.payments.paid_by_wallet(watch.network, transfer.sender)
        if kind == "ambiguous":
            log.warning(
                "crypto transfer %s:%s from %s: requests of several users name this wallet; "
                "not credited, needs an admin",
                transfer.tx_hash,
                transfer.log_index,
                transfer.sender,
            )
        return payment_id, kind

    def _last_block(self, watch: CryptoWatch) -> int | None:
        with self.db.read() as tx:
            row = tx.fetchone(
                "SELECT last_block FROM crypto_scan WHERE network = ?", (watch.network,)
            )
        return None if row is None else int(row[0])

    def _save_block(self, network: str, block: int) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM crypto_scan WHERE network = ?", (network,))
            tx.execute(
                "INSERT INTO crypto_scan (network, last_block) VALUES (?, ?)", (network, block)
            )

    # ------------------------------------------------------------------ loop

    async def run_forever(self) -> None:
        tasks = [
            self._every(self.reconcile_interval, self.reconcile_once),
            self._every(self.reconcile_interval, self.auto_renew_once),
        ]
        if self.crypto is not None:
            tasks.append(self._every(self.crypto_interval, self.scan_once))
        try:
            await asyncio.gather(*tasks)
        finally:
            self.election.close()

    async def _every(self, interval: float, step: Callable[[], Awaitable[int]]) -> None:
        while True:
            try:
                if await asyncio.to_thread(self.election.leading):
                    await step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("payment job failed; retrying in %.0fs", interval)
            await asyncio.sleep(interval)
