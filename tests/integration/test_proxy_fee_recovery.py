"""No proxy fee lost when a server process is SIGKILLed (issue 16; docs/adr/0029).

A real ``aiserve-gpuproxyd`` on PostgreSQL and Redis proxies N paid requests to the caller's
sandbox instance (hosted by this test process), and is SIGKILLed before its periodic capture
(every 5 s). Once its liveness mark has expired, the elected hold sweep (here: this test
process's) captures exactly N x price from the dead process's lease and releases it, once the
mark has stayed gone for ``CONFIRM``; a further sweep captures nothing more.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import pytest

from domain.marketplace import OfferQuery
from domain.services.marketplace import RentSpec
from infrastructure.proxy.fee_tally import ALIVE, LEASES
from infrastructure.proxy.lease_recovery import CONFIRM
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from tests.support.http import JWT_SECRET, ROOT, env_of, wait_healthy
from tests.support.pg import free_port

USD = 1_000_000
PRICE = 1_000  # PROXY_REQUEST_PRICE 0.001000
REQUESTS = 7


def lease_captures(c: Container, user_id: str) -> int:
    return sum(
        int(e.data["amount"])
        for e in c.ledger.history(user_id)
        if e.name == "HoldCaptured" and str(e.data["hold_id"]).startswith("lease:")
    )


def live_leases(c: Container, user_id: str) -> list[str]:
    return [h.hold_id for h in c.ledger.account(user_id).holds if h.hold_id.startswith("lease:")]


@pytest.mark.slow
def test_fees_of_a_sigkilled_server_are_captured_exactly_once(
    pg_settings: Settings, redis_url: str, redis_client: Any
) -> None:
    settings = dataclasses.replace(
        pg_settings,
        redis=dataclasses.replace(pg_settings.redis, url=redis_url),
        auth=dataclasses.replace(
            pg_settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
        providers=dataclasses.replace(
            pg_settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
    )
    host = bootstrap(settings)  # hosts the instance; later the elected sweep
    loop = asyncio.new_event_loop()
    console = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    proc = None
    try:
        user = host.users.create("fees@example.com", "correct-horse-battery", "Fees")
        host.ledger.grant(user.id, 10 * USD, key="seed")
        _, key = host.auth.keys.create(user.id, "fees")
        offer = min(
            loop.run_until_complete(host.marketplace.catalog(OfferQuery())).offers,
            key=lambda o: o.price_per_hour,
        ).offer_id
        gpu = loop.run_until_complete(host.marketplace.rent(user.id, "sandbox", offer, RentSpec()))
        assert gpu.state == "running"

        port = free_port()
        env = {
            **os.environ,
            **env_of(settings),
            "SANDBOX_PROVIDER_ENABLED": "false",
            "PROXY_REQUEST_PRICE": "0.001000",
            "PROXY_LEASE_AMOUNT": "0.05",
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "GRPC_PORT": str(free_port()),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "interfaces.server", "--env-file", "/nonexistent"],
            cwd=ROOT,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"

        def output() -> str:
            console.seek(0)
            return console.read().decode(errors="replace")

        wait_healthy(proc, url, timeout=60, output=output)
        with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
            deadline = time.monotonic() + 15  # the server's read model catches the rental up
            while client.get(f"/api/v1/gpu/proxy/{gpu.id}/health").status_code != 200:
                assert time.monotonic() < deadline, output()[-2000:]
                time.sleep(0.1)
            answered = 1
            for _ in range(REQUESTS - 1):
                assert client.get(f"/api/v1/gpu/proxy/{gpu.id}/health").status_code == 200
                answered += 1
        proc.kill()  # SIGKILL: no shutdown settlement
        proc.wait()

        before = lease_captures(host, user.id)
        assert before < answered * PRICE, "settled before the kill: nothing to recover"
        assert live_leases(host, user.id)  # its lease still holds the user's credit

        deadline = time.monotonic() + 30  # the dead process's liveness mark expires (15 s)
        while any(redis_client.exists(k) for k in redis_client.keys(ALIVE + "*")):
            assert time.monotonic() < deadline, "liveness mark never expired"
            time.sleep(0.5)
        sweep = host.hold_sweep()
        sweep.sweep_once()  # notes the mark gone: it may only have lost Redis for a while
        assert lease_captures(host, user.id) == before
        deadline = time.monotonic() + CONFIRM.total_seconds() + 15
        while live_leases(host, user.id):  # gone for CONFIRM of Redis time, no beat: dead
            assert time.monotonic() < deadline, "lease never recovered"
            time.sleep(1)
            sweep.sweep_once()
        assert lease_captures(host, user.id) == answered * PRICE
        assert live_leases(host, user.id) == []
        assert redis_client.hlen(LEASES) == 0
        sweep.sweep_once()  # a second recovery captures nothing more
        assert lease_captures(host, user.id) == answered * PRICE
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        console.close()
        loop.run_until_complete(host.aclose_providers())
        loop.close()
        host.close()
