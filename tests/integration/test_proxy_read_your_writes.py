"""Read your writes on the proxy, across two real server processes sharing PostgreSQL and Redis.

Process A rents and destroys; process B proxies. A proxied request sent right after an answer
said ``running`` reaches the instance through B (instance and pool routes); one sent right
after the destroy answer is refused (404 / 409) by B itself. Two kinds of destroy: one whose
instance stops listening at once (hosted by A's sandbox), and one whose instance keeps
answering after the provider accepted the destroy (hosted by this test process's sandbox, as
a real marketplace may take a while to stop a machine): B must not forward to it either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import httpx
import pytest
import redis
from litestar.testing import TestClient

from domain.marketplace import OfferQuery
from domain.services.marketplace import RentSpec
from infrastructure.proxy.instance_signal import RedisInstanceSignal
from infrastructure.settings import Settings
from interfaces.bootstrap import bootstrap
from interfaces.http.app import create_app
from tests.support.http import JWT_SECRET, env_of, server_process
from tests.support.pg import free_port

USD = 1_000_000
ROUNDS = 4


def _user_key(settings: Settings) -> tuple[str, str]:
    c = bootstrap(settings)
    try:
        user = c.users.create("ryw@example.com", "correct-horse-battery", "RYW")
        c.ledger.grant(user.id, 100 * USD, key="seed")
        _, key = c.auth.keys.create(user.id, "ryw")
    finally:
        c.close()
    return user.id, key


def _settle(client: httpx.Client, route: str, status: int = 200) -> None:
    """Wait until B answers ``status`` on the route (its caches then hold that answer)."""
    deadline = time.monotonic() + 15
    while client.get(f"/api/v1/gpu/proxy/{route}/health").status_code != status:
        assert time.monotonic() < deadline, f"B never answered {status} on {route}"
        time.sleep(0.05)


def _refused(client: httpx.Client, gpu_id: str) -> str | None:
    """None if B refuses both routes at once without forwarding; else what it did."""
    own = client.get(f"/api/v1/gpu/proxy/{gpu_id}/health")
    pool = client.get("/api/v1/gpu/proxy/pool/health")
    forwarded = [r for r in (own, pool) if "x-gpuproxy-instance" in r.headers]
    if (own.status_code, pool.status_code) == (404, 409) and not forwarded:
        assert own.json()["title"] == "Not Found"  # RFC 9457: the status phrase
        assert "Instance not found" in own.json()["detail"]
        return None
    return f"{own.status_code}/{pool.status_code}, {len(forwarded)} forwarded"


@pytest.mark.slow
def test_proxy_sees_running_and_destroyed_at_once_on_another_process(
    pg_settings: Settings, redis_url: str
) -> None:
    settings = dataclasses.replace(
        pg_settings,
        redis=dataclasses.replace(pg_settings.redis, url=redis_url),
        auth=dataclasses.replace(pg_settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(
            pg_settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
    )
    user_id, key = _user_key(settings)
    env = {**env_of(settings), "RATE_LIMIT_PER_MINUTE": "100000"}
    renter = {**env, "SANDBOX_PROVIDER_ENABLED": "true", "SANDBOX_PROVISIONING_DELAY": "0"}
    proxy = {**env, "SANDBOX_PROVIDER_ENABLED": "false"}
    host = bootstrap(settings)  # hosts the instances that outlive their destroy
    loop = asyncio.new_event_loop()
    failures: list[str] = []
    try:
        with server_process(renter) as a, server_process(proxy) as b:
            auth = {"X-API-Key": key}
            with (
                httpx.Client(base_url=a, headers=auth, timeout=30) as ha,
                httpx.Client(base_url=b, headers=auth, timeout=30) as hb,
            ):
                offers = ha.get("/api/v1/gpu/instances?provider=sandbox").json()["offers"]
                offer = min(offers, key=lambda o: float(o["price_per_hour"]))["id"]
                for round_ in range(ROUNDS):
                    _settle(hb, "pool", 409)  # B's caches hold "no instances"
                    rented = ha.post(f"/api/v1/gpu/instances/sandbox/{offer}", json={})
                    assert rented.status_code == 201, rented.text
                    gpu: dict[str, Any] = rented.json()["instance"]
                    assert gpu["state"] == "running"
                    own = hb.get(f"/api/v1/gpu/proxy/{gpu['id']}/health").status_code
                    pool = hb.get("/api/v1/gpu/proxy/pool/health").status_code
                    if (own, pool) != (200, 200):
                        failures.append(f"round {round_}, after running: {own}/{pool}")
                    _settle(hb, gpu["id"])
                    destroyed = ha.delete(f"/api/v1/gpu/instances/sandbox/{gpu['id']}")
                    assert destroyed.json()["instance"]["state"] == "terminated"
                    refusal = _refused(hb, gpu["id"])
                    if refusal:
                        failures.append(f"round {round_}, after destroy: {refusal}")

                    # An instance that still answers after its destroy was accepted.
                    alive = loop.run_until_complete(
                        host.marketplace.rent(user_id, "sandbox", offer, RentSpec())
                    )
                    _settle(hb, str(alive.id))
                    destroyed = ha.delete(f"/api/v1/gpu/instances/sandbox/{alive.id}")
                    assert destroyed.json()["instance"]["state"] == "terminated"
                    refusal = _refused(hb, str(alive.id))
                    if refusal:
                        failures.append(f"round {round_}, still-answering instance: {refusal}")
                    assert httpx.get(f"http://{alive.host}:{alive.port}/health").status_code == 200
                    loop.run_until_complete(
                        host.marketplace.providers["sandbox"].destroy(
                            alive.provider_instance_id or ""
                        )
                    )
    finally:
        loop.run_until_complete(host.aclose_providers())
        loop.close()
        host.close()
    assert not failures, failures


@pytest.fixture(params=["sqlite", "postgres", "postgres+redis"])
def shared(request: pytest.FixtureRequest) -> Settings:
    """Settings for several containers on one database: a file signal, none, or Redis."""
    db = "pg_settings" if request.param.startswith("postgres") else "sqlite_settings"
    settings: Settings = request.getfixturevalue(db)
    if request.param.endswith("redis"):
        settings = dataclasses.replace(
            settings,
            redis=dataclasses.replace(settings.redis, url=request.getfixturevalue("redis_url")),
        )
    return dataclasses.replace(
        settings,
        auth=dataclasses.replace(
            settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
        providers=dataclasses.replace(
            settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
    )


def test_proxy_follows_answers_of_other_containers(shared: Settings) -> None:
    """Three containers on one database (as three processes would be): ``a`` rents and
    destroys, ``host`` hosts instances that outlive their destroy, ``b`` lists and proxies."""
    user_id, key = _user_key(shared)
    a, host, b = bootstrap(shared), bootstrap(shared), bootstrap(shared)
    failures: list[str] = []
    try:
        with TestClient(create_app(b)) as client:
            client.headers["X-API-Key"] = key
            offer = min(
                asyncio.run(a.marketplace.catalog(OfferQuery())).offers,
                key=lambda o: o.price_per_hour,
            ).offer_id
            for round_ in range(3):
                for renter, name in ((a, "closes"), (host, "answers on")):
                    b.runner.catch_up()
                    _settle(client, "pool", 409)  # b's caches hold "no instances"
                    gpu = asyncio.run(
                        renter.marketplace.rent(user_id, "sandbox", offer, RentSpec())
                    )
                    assert gpu.state == "running"
                    listed = client.get("/api/v1/gpu/rentals").json()["rentals"]
                    if [r["state"] for r in listed if r["id"] == str(gpu.id)] != ["running"]:
                        failures.append(f"{round_} {name}: rentals do not list it")
                    own = client.get(f"/api/v1/gpu/proxy/{gpu.id}/health").status_code
                    pool = client.get("/api/v1/gpu/proxy/pool/health").status_code
                    if (own, pool) != (200, 200):
                        failures.append(f"{round_} {name}: after running {own}/{pool}")
                    b.runner.catch_up()
                    _settle(client, str(gpu.id))  # b's caches hold the instance
                    gpu = asyncio.run(a.marketplace.destroy(gpu.id, actor=user_id))
                    assert gpu.state == "terminated"
                    own = client.get(f"/api/v1/gpu/proxy/{gpu.id}/health").status_code
                    pool = client.get("/api/v1/gpu/proxy/pool/health").status_code
                    if (own, pool) != (404, 409):
                        failures.append(f"{round_} {name}: after destroy {own}/{pool}")
                    if renter is host:
                        assert httpx.get(f"http://{gpu.host}:{gpu.port}/health").status_code == 200
    finally:
        for c in (a, host, b):
            c.close()
    assert not failures, failures


def test_instance_signal_unreachable_redis_reads_as_changed(redis_url: str) -> None:
    """Redis down: every read differs (lists are reloaded, never trusted) and a bump fails
    quietly (the destroy it follows is already saved); Redis up: reads are stable."""
    live = RedisInstanceSignal(redis.Redis.from_url(redis_url))
    owner = f"user-{time.monotonic_ns()}"
    assert live.read(owner) == live.read(owner) == 0
    live.bump(owner)
    assert live.read(owner) == 1
    dead = RedisInstanceSignal(
        redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2)
    )
    assert dead.read(owner) != dead.read(owner)
    dead.bump(owner)  # logged, not raised
