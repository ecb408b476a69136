"""A proxied request that fails after its fee was taken, before anything was delivered, is not
charged (the scale test saw a fee kept for a request answered 503 while PostgreSQL restarted:
the user's balancing strategy is read after the fee)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator

import pytest

from domain.balancing import Backend
from infrastructure.proxy.runtime import ProxyRuntime, _Pool
from infrastructure.proxy.targets import SANDBOX_PROVIDER, Endpoint
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap

PRICE = 1_000  # micro-USD per request
USD = 1_000_000


def _runtime(container: Container, user_id: str, port: int) -> ProxyRuntime:
    runtime = ProxyRuntime(
        container.db,
        container.ledger,
        default_strategy="round_robin",
        price=PRICE,
        lease_amount=100_000,
        allow_private=True,
        connect_timeout=2.0,
        default_timeout=10.0,
        flush_interval=60.0,
        clock=container.ledger.clock,
    )
    endpoint = Endpoint("inst-1", SANDBOX_PROVIDER, "127.0.0.1", port)
    runtime._pools[user_id] = _Pool(1e12, [endpoint], [Backend("inst-1", SANDBOX_PROVIDER, 24, 1)])
    return runtime


@pytest.fixture
def sqlite_container(sqlite_settings: Settings) -> Iterator[Container]:
    c = bootstrap(sqlite_settings)
    try:
        yield c
    finally:
        c.close()


def test_fee_given_back_when_the_strategy_read_fails(sqlite_container: Container) -> None:
    container = sqlite_container
    user = container.users.create("fee@example.com", "correct-horse-battery", "Fee")
    container.ledger.grant(user.id, 10 * USD, key="seed")
    runtime = _runtime(container, user.id, 9)  # never reached: the strategy read fails first
    with container.db.transaction() as tx:  # the read fails as a store that went away does
        tx.execute("DROP TABLE user_preferences")

    async def go() -> None:
        try:
            with pytest.raises(sqlite3.OperationalError, match="user_preferences"):
                await runtime.forward(user.id, method="GET", headers={}, body=None, timeout=5)
            await runtime.leases.close()  # captures what was spent, releases the lease
        finally:
            await runtime.forwarder.aclose()

    asyncio.run(go())
    captured = sum(
        e.data["amount"] for e in container.ledger.history(user.id) if e.name == "HoldCaptured"
    )
    assert captured == 0
