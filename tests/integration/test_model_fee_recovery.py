"""Model-inference fees are in the durable fee tally too (docs/adr/0029).

With Redis the composition root gives ``ModelService`` the same ``RedisFeeTally`` as the proxy:
each prediction's fee is stored in Redis before the answer is sent, so when the serving
process dies (here: its background job stopped, no shutdown settlement) the elected hold sweep
captures exactly the fees answered from its lease, and releases it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

from infrastructure.proxy.fee_tally import ALIVE, LEASES, TALLY, RedisFeeTally
from infrastructure.proxy.lease_recovery import LeaseRecovery
from infrastructure.settings import Settings
from tests.conftest import FixedClock
from tests.integration.test_models_support import dense_onnx, make_world

PRICE = 10_000
ANSWERED = 4


def test_a_dead_model_servers_fees_are_recovered_exactly(
    pg_settings: Settings, redis_url: str, redis_client: Any, clock: FixedClock
) -> None:
    settings = dataclasses.replace(
        pg_settings, redis=dataclasses.replace(pg_settings.redis, url=redis_url)
    )
    models = dataclasses.replace(settings.models, predict_price=PRICE, lease_amount=50_000)
    with make_world(settings, clock, models=models) as w:
        service = w.c.model_service()
        assert isinstance(service.leases.tally, RedisFeeTally)
        assert w.upload("alice", "p.onnx", dense_onnx()[0], name="p").status_code == 201
        for _ in range(ANSWERED):
            assert w.predict("alice", "p", {"input": [1, 2, 3, 4]}).status_code == 200
        hold_id = service.leases.snapshot()[w.ids["alice"]].hold_id
        assert int(redis_client.get(TALLY + hold_id)) == ANSWERED * PRICE  # before answering

        async def die() -> None:  # no more beats or captures; nothing settled or released
            task, service._task = service._task, None
            assert task is not None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        w.client.blocking_portal.call(die)
        redis_client.delete(ALIVE + service.process_id)  # what its expiry does
        recovery = LeaseRecovery(w.c.ledger, RedisFeeTally(w.c.redis), confirm=timedelta(0))
        recovery.recover_once()  # first seen gone (captures nothing)
        recovery.recover_once()
        account = w.c.ledger.account(w.ids["alice"])
        assert account.total_charged == ANSWERED * PRICE
        assert [h for h in account.holds if h.hold_id == hold_id] == []
        assert not redis_client.hexists(LEASES, hold_id)
        w.client.blocking_portal.call(service.leases.close)  # it was only stalled after all
        assert w.c.ledger.account(w.ids["alice"]).total_charged == ANSWERED * PRICE  # not twice
