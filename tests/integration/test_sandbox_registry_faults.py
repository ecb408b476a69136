"""The sandbox registry when the database fails the owner (docs/adr/0028)."""

from __future__ import annotations

import asyncio

from domain.marketplace import RentRequest
from infrastructure.providers.sandbox import SandboxProvider
from infrastructure.providers.sandbox_registry import SandboxRegistry
from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap


class DatabaseDownOnce(SandboxRegistry):
    """The real registry, whose first ``mark_terminated`` finds the database unreachable."""

    failed = False

    def mark_terminated(self, instance_id: str) -> None:
        if not self.failed:
            self.failed = True
            raise OSError("connection refused")
        super().mark_terminated(instance_id)


def test_a_destroy_whose_row_could_not_be_marked_is_marked_at_the_next_beat(
    pg_settings: Settings,
) -> None:
    c = bootstrap(pg_settings)
    owner = SandboxProvider(provisioning_delay=0, registry=DatabaseDownOnce(c.db, timeout=60))
    reader = SandboxRegistry(c.db, timeout=60)
    loop = asyncio.new_event_loop()
    try:
        made = loop.run_until_complete(owner.rent("sbx-a4000-1x-de", RentRequest(label="x")))
        loop.run_until_complete(owner.destroy(made.instance_id))  # no error: the server stops
        assert loop.run_until_complete(owner.status(made.instance_id)).status == "terminated"
        row = reader.get(made.instance_id)
        assert row is not None
        assert not row.gone  # the row still says alive, and the owner keeps beating it
        owner.beat()
        row = reader.get(made.instance_id)
        assert row is not None
        assert row.terminated
        assert reader.live() == []
    finally:
        loop.run_until_complete(owner.aclose())
        loop.close()
        c.close()
