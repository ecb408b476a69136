"""Background work of the marketplace: poll new instances, meter running ones, finish stops.

Runs as one asyncio task in the server process. It picks work from the ``instances`` read
model (which only says *what to look at*); every decision is taken by the aggregates through
``MarketplaceService``. Only the elected process works a round (``infrastructure.jobs.election``):
across workers and replicas each metering interval is billed by one process, and when it dies
another takes over within a round.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable

from domain.errors import DomainError
from domain.marketplace import ProviderError
from domain.services.marketplace import MarketplaceService
from infrastructure.db.sql import Database
from infrastructure.jobs.election import Election, SoleProcess
from infrastructure.readmodels.queries.instances import InstanceQueries

log = logging.getLogger(__name__)


class MarketplaceJobs:
    def __init__(
        self,
        market: MarketplaceService,
        db: Database,
        *,
        poll_interval: float,
        metering_interval: float,
        reconcile_interval: float = 300.0,
        reconcile_grace: float = 120.0,
        election: Election | None = None,
    ) -> None:
        self.market = market
        self.db = db
        self.instances = InstanceQueries(db)
        self.election: Election = election or SoleProcess()
        self.poll_interval = poll_interval
        self.metering_interval = metering_interval
        self.reconcile_interval = reconcile_interval
        self.reconcile_grace = reconcile_grace  # seconds a new rental may be missing remotely
        self._last_metering = 0.0
        self._last_reconcile = time.monotonic()

    def _ids(self, *states: str) -> list[uuid.UUID]:
        return [uuid.UUID(i) for i in self.instances.ids_in_states(*states)]

    async def run_once(self) -> bool:
        """One round if this process leads: refresh starting instances, finish stops, meter if
        it is time. Returns whether it led."""
        if not await asyncio.to_thread(self.election.leading):
            self._last_metering = 0.0  # on taking over, meter at once
            return False
        for instance_id in await asyncio.to_thread(self._ids, "requested", "provisioning"):
            await self._guard(self.market.refresh(instance_id))
        for instance_id in await asyncio.to_thread(self._ids, "stopping"):
            await self._guard(
                self.market.destroy(instance_id, actor="system", reason="stop requested")
            )
        if time.monotonic() - self._last_metering >= self.metering_interval:
            self._last_metering = time.monotonic()
            await self.meter_all()
        if time.monotonic() - self._last_reconcile >= self.reconcile_interval:
            self._last_reconcile = time.monotonic()
            await self.reconcile()
        return True

    async def reconcile(self) -> dict[str, int]:
        live = await asyncio.to_thread(
            self._ids, "requested", "provisioning", "running", "stopping"
        )
        counts = await self.market.reconcile(live, grace=self.reconcile_grace)
        if any(counts.values()):
            log.warning("reconciler: %s", counts)
        return counts

    async def meter_all(self) -> None:
        for instance_id in await asyncio.to_thread(self._ids, "running"):
            try:
                must_stop = await asyncio.to_thread(self.market.meter, instance_id)
            except DomainError:
                log.exception("metering %s failed", instance_id)
                continue
            if must_stop:
                log.info("stopping %s: credits or a guard-rail window ran out", instance_id)
                await self._guard(
                    self.market.destroy(
                        instance_id,
                        actor="guardrails",
                        reason="credits or spending limit exhausted",
                    )
                )

    async def run_forever(self) -> None:
        try:
            while True:
                try:
                    await self.run_once()
                except Exception:
                    log.exception("marketplace jobs round failed")
                await asyncio.sleep(self.poll_interval)
        finally:
            self.election.close()

    @staticmethod
    async def _guard(work: Awaitable[object]) -> None:
        try:
            await work
        except (DomainError, ProviderError) as exc:
            log.warning("marketplace job step failed: %s", exc)
