"""Two real server processes proxy for one user, each paying from its own credit lease:
the ledger never grants more than it has, and what was served is charged exactly."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import Counter

import httpx
import pytest

from domain.marketplace import OfferQuery
from domain.services.marketplace import RentSpec
from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from tests.support.http import JWT_SECRET, env_of, server_process

USD = 1_000_000
PRICE = 100_000  # 0.10 USD per request
LEASE = 500_000  # 0.50 USD per lease
FUNDS = 3 * USD  # 30 requests' worth


@pytest.mark.slow
def test_leases_across_two_processes_never_overspend(pg_settings: Settings) -> None:
    settings = dataclasses.replace(
        pg_settings,
        auth=dataclasses.replace(pg_settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(
            pg_settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
    )
    c = bootstrap(settings)  # this process hosts the sandbox instance the servers reach
    try:
        user = c.users.create("lease@example.com", "correct-horse-battery", "Lease")
        c.ledger.grant(user.id, 100 * USD, key="seed")
        _, key = c.auth.keys.create(user.id, "procs")

        async def rent_and_start() -> None:
            offers = (await c.marketplace.catalog(OfferQuery())).offers
            offer = min(offers, key=lambda o: o.price_per_hour)
            gpu = await c.marketplace.rent(user.id, "sandbox", offer.offer_id, RentSpec())
            await c.marketplace.refresh(gpu.id)

        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(rent_and_start())
            c.ledger.charge(user.id, c.ledger.account(user.id).available - FUNDS, key="trim")
            c.runner.catch_up()
            env = {
                **env_of(settings),
                "PROXY_REQUEST_PRICE": "0.10",
                "PROXY_LEASE_AMOUNT": "0.50",
                "RATE_LIMIT_PER_MINUTE": "100000",
                "SANDBOX_PROVIDER_ENABLED": "false",
            }
            codes: Counter[int] = Counter()
            lock = threading.Lock()
            with server_process(env) as first, server_process(env) as second:

                def hammer(base: str) -> None:
                    with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=30) as h:
                        refused = 0
                        while refused < 5:
                            status = h.get("/api/v1/gpu/proxy/pool/health").status_code
                            with lock:
                                codes[status] += 1
                            refused += status == 402

                threads = [threading.Thread(target=hammer, args=(u,)) for u in (first, second) * 2]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            # both servers stopped gracefully: every lease captured and released
            account = c.ledger.account(user.id)
            captured = sum(
                e.data["amount"]
                for e in c.ledger.history(user.id)
                if e.name == "HoldCaptured" and e.data["hold_id"].startswith("lease:")
            )
        finally:
            loop.run_until_complete(c.aclose_providers())
            loop.close()
    finally:
        c.close()
    assert set(codes) == {200, 402}, codes
    served = codes[200]
    assert 0 < served <= FUNDS // PRICE
    assert captured == served * PRICE
    assert not [h for h in account.holds if h.hold_id.startswith("lease:")]
    assert account.available >= 0
