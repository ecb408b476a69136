"""The proxy through the REST API, against real sandbox instances (local HTTP servers)."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.support.http import JWT_SECRET

USD = 1_000_000
PASSWORD = "correct-horse-battery"


@dataclasses.dataclass
class World:
    client: TestClient[Any]
    c: Container
    alice: dict[str, str]
    bob: dict[str, str]
    alice_gpus: list[dict[str, Any]]
    bob_gpu: dict[str, Any]


def _user(client: TestClient[Any], c: Container, email: str, credits: int) -> dict[str, str]:
    client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "U"})
    token = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    if credits:
        c.ledger.grant(c.users.by_email(email).id, credits, key=f"seed-{email}")
    return {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}


def _rent(client: TestClient[Any], auth: dict[str, str], count: int) -> list[dict[str, Any]]:
    offers = client.get("/api/v1/gpu/instances?provider=sandbox", headers=auth).json()
    offer = min(offers["offers"], key=lambda o: float(o["price_per_hour"]))
    out = []
    for _ in range(count):
        rented = client.post(f"/api/v1/gpu/instances/sandbox/{offer['id']}", json={}, headers=auth)
        assert rented.status_code in {200, 201, 202}, rented.text
        out.append(rented.json()["instance"] if "instance" in rented.json() else rented.json())
    return out


def _running(c: Container, gpus: list[dict[str, Any]]) -> list[dict[str, Any]]:
    c.runner.catch_up()
    asyncio.run(c.jobs().run_once())
    c.runner.catch_up()
    with c.db.read() as tx:
        rows = {
            r[0]: (r[1], int(r[2]), r[3])
            for r in tx.fetchall("SELECT instance_id, host, port, state FROM instances")
        }
    result = []
    for gpu in gpus:
        host, port, state = rows[gpu["id"]]
        assert state == "running"
        result.append({**gpu, "host": host, "port": port})
    return result


def make_world(settings: Settings, clock: FixedClock, **groups: Any) -> Iterator[World]:
    tuned = dataclasses.replace(settings, **groups)
    tuned = dataclasses.replace(
        tuned,
        auth=dataclasses.replace(tuned.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000),
        providers=dataclasses.replace(
            tuned.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
    )
    c = bootstrap(tuned, clock=clock)
    try:
        with TestClient(create_app(c)) as client:
            alice = _user(client, c, "alice@example.com", 100 * USD)
            bob = _user(client, c, "bob@example.com", 100 * USD)
            gpus = _running(c, _rent(client, alice, 3))
            bob_gpu = _running(c, _rent(client, bob, 1))[0]
            yield World(client, c, alice, bob, gpus, bob_gpu)
    finally:
        c.close()


@pytest.fixture
def world(settings: Settings, clock: FixedClock) -> Iterator[World]:
    yield from make_world(settings, clock)


def _url(gpu: dict[str, Any], path: str = "/echo") -> str:
    return f"http://{gpu['host']}:{gpu['port']}{path}"


def test_envelope_http_reaches_own_instance_without_credentials(world: World) -> None:
    gpu = world.alice_gpus[0]
    response = world.client.post(
        "/api/v1/gpu/proxy",
        json={
            "protocol": "http",
            "target_url": _url(gpu),
            "method": "POST",
            "headers": {"X-Custom": "yes", "Cookie": "session=secret"},
            "body": {"prompt": "Hello world"},
        },
        headers={**world.alice, "Cookie": "ours=1"},
    )
    assert response.status_code == 200, response.text
    echoed = response.json()
    assert echoed["json"] == {"prompt": "Hello world"}
    assert echoed["headers"]["x-custom"] == "yes"
    for secret in ("authorization", "x-api-key", "cookie"):
        assert secret not in echoed["headers"]
    assert response.headers["x-gpuproxy-instance"] == gpu["id"]


def test_envelope_passes_upstream_status_through(world: World) -> None:
    response = world.client.post(
        "/api/v1/gpu/proxy",
        json={"protocol": "http", "target_url": _url(world.alice_gpus[0], "/echo?status=418")},
        headers=world.alice,
    )
    assert response.status_code == 418


def test_openinference_and_mcp(world: World) -> None:
    gpu = world.alice_gpus[1]
    infer = world.client.post(
        "/api/v1/gpu/proxy",
        json={
            "protocol": "openinference",
            "instance_id": gpu["id"],
            "model": "demo",
            "body": {
                "inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]
            },
        },
        headers=world.alice,
    )
    assert infer.status_code == 200, infer.text
    assert infer.json()["outputs"][0]["data"] == [3, 5, 7]
    ready = world.client.post(
        "/api/v1/gpu/proxy",
        json={
            "protocol": "openinference",
            "target_url": _url(gpu, ""),
            "path": "/v2/health/ready",
            "method": "GET",
        },
        headers=world.alice,
    )
    assert ready.status_code == 200
    mcp = world.client.post(
        "/api/v1/gpu/proxy",
        json={"protocol": "mcp", "instance_id": gpu["id"], "body": {"method": "tools/list"}},
        headers=world.alice,
    )
    assert mcp.status_code == 200, mcp.text
    assert mcp.json()["jsonrpc"] == "2.0"
    assert [t["name"] for t in mcp.json()["result"]["tools"]] == ["echo"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"protocol": "ftp", "instance_id": "x"}, "protocol"),
        ({"protocol": "http"}, "target_url"),
        ({"protocol": "http", "target_url": "http://a/", "instance_id": "b"}, "target_url"),
        ({"protocol": "openinference", "instance_id": "x"}, "model"),
        ({"protocol": "mcp", "instance_id": "x", "body": [1]}, "body"),
        ({"protocol": "http", "instance_id": "x", "method": "BREW"}, "method"),
    ],
)
def test_bad_envelopes_are_400(world: World, body: dict[str, Any], field: str) -> None:
    response = world.client.post("/api/v1/gpu/proxy", json=body, headers=world.alice)
    assert response.status_code == 400, response.text
    assert field in response.text


def test_ssrf_and_ownership(world: World) -> None:
    bob_url = _url(world.bob_gpu)
    own = world.alice_gpus[0]
    for target in (
        bob_url,  # another user's instance
        "http://169.254.169.254/latest/meta-data/",
        f"http://127.0.0.1:{own['port'] + 1}/",  # a local service that is not the instance
        "http://localhost:5432/",
        "http://10.0.0.5/",
        "file:///etc/passwd",
        "http://2130706433:80/",
    ):
        response = world.client.post(
            "/api/v1/gpu/proxy",
            json={"protocol": "http", "target_url": target},
            headers=world.alice,
        )
        assert response.status_code == 403, (target, response.text)
    raw = world.client.get(f"/api/v1/gpu/proxy/{world.bob_gpu['id']}/echo", headers=world.alice)
    assert raw.status_code == 404
    assert world.client.get(f"/api/v1/gpu/proxy/{own['id']}/echo").status_code == 401


def test_raw_route_streams_and_keeps_path_and_query(world: World) -> None:
    gpu = world.alice_gpus[0]
    base = f"/api/v1/gpu/proxy/{gpu['id']}"
    echoed = world.client.post(
        f"{base}/echo/a/b?x=1&y=2", content=b"raw-bytes", headers=world.alice
    ).json()
    assert (echoed["path"], echoed["query"], echoed["body"]) == (
        "/echo/a/b",
        "x=1&y=2",
        "raw-bytes",
    )
    with world.client.stream("GET", f"{base}/stream?chunks=4", headers=world.alice) as stream:
        assert stream.status_code == 200
        lines = [line for line in stream.iter_lines() if line]
    assert len(lines) == 4
    assert lines[0].startswith("chunk 0")
    assert world.client.get(f"{base}/health", headers=world.alice).status_code == 200


def test_timelimit_gives_504(world: World) -> None:
    gpu = world.alice_gpus[0]
    response = world.client.get(
        f"/api/v1/gpu/proxy/{gpu['id']}/echo?delay_ms=1500",
        headers={**world.alice, "X-Timelimit": "0.3"},
    )
    assert response.status_code == 504
    bad = world.client.get(
        f"/api/v1/gpu/proxy/{gpu['id']}/echo", headers={**world.alice, "X-Timelimit": "soon"}
    )
    assert bad.status_code == 400
    assert "X-Timelimit" in bad.text


def _who(world: World, n: int, path: str = "/echo") -> list[str]:
    answered = []
    for _ in range(n):
        response = world.client.get(f"/api/v1/gpu/proxy/pool{path}", headers=world.alice)
        assert response.status_code == 200, response.text
        answered.append(response.headers["x-gpuproxy-instance"])
    return answered


def test_pool_round_robin_and_strategy_switch(world: World) -> None:
    ids = [g["id"] for g in world.alice_gpus]
    answered = _who(world, 9)
    assert collections.Counter(answered) == dict.fromkeys(ids, 3)
    assert answered[:3] == answered[3:6] == answered[6:9]  # a fixed rotation
    bad = world.client.put(
        "/api/v1/loadbalancer/strategy", json={"strategy": "fastest"}, headers=world.alice
    )
    assert bad.status_code == 400
    assert "least_connections" in bad.text
    ok = world.client.put(
        "/api/v1/loadbalancer/strategy", json={"strategy": "equal_weighted"}, headers=world.alice
    )
    assert ok.status_code == 200
    got = world.client.get("/api/v1/loadbalancer/strategy", headers=world.alice).json()
    assert got["strategy"] == "equal_weighted"
    # the switch kept the tracked load: equal_weighted sees 3 each and evens out to 5 each
    assert collections.Counter(answered + _who(world, 6)) == dict.fromkeys(ids, 5)
    load = world.client.get("/api/v1/loadbalancer/load?type=server", headers=world.alice).json()
    assert load["strategy"] == "equal_weighted"
    assert len(load["server"]["instances"]) == 3


def test_dead_instance_is_retried_then_ejected(world: World) -> None:
    dead = world.alice_gpus[2]
    sandbox = world.c.marketplace.providers["sandbox"]
    gpu = world.c.marketplace.get(uuid.UUID(dead["id"]))
    asyncio.run(sandbox.destroy(gpu.provider_instance_id or ""))
    answered = _who(world, 12)  # every request succeeds: connect errors go to another instance
    assert dead["id"] not in answered
    runtime = world.client.app.state.proxy
    snapshot = runtime.tracker.snapshot()[dead["id"]]
    assert snapshot.ejected
    assert snapshot.consecutive_failures >= 5


def test_failing_instance_503_is_retried(world: World) -> None:
    answered = _who(world, 6, "/echo?status=200")
    assert len(set(answered)) == 3


def test_usage_flush_feeds_the_load_table(world: World) -> None:
    _who(world, 6)
    runtime = world.client.app.state.proxy
    assert runtime.flush() == 3
    world.c.runner.catch_up()
    load = world.client.get("/api/v1/loadbalancer/load", headers=world.alice).json()
    totals = {i["instance_id"]: i["total_requests"] for i in load["server"]["instances"]}
    assert totals == {g["id"]: 2 for g in world.alice_gpus}
    assert load["provider"]["sandbox"]["total_requests"] == 6
    assert runtime.flush() == 0  # drained


def test_per_request_fee_from_a_lease_then_402(settings: Settings, clock: FixedClock) -> None:
    """Requests are paid from leased holds; when funds run out: 402, nothing overspent."""
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(
            settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
        providers=dataclasses.replace(
            settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
        proxy=dataclasses.replace(settings.proxy, request_price=100_000, lease_amount=300_000),
    )
    c = bootstrap(tuned, clock=clock)
    try:
        with TestClient(create_app(c)) as client:
            alice = _user(client, c, "alice@example.com", 100 * USD)
            _running(c, _rent(client, alice, 1))
            alice_id = c.users.by_email("alice@example.com").id
            # leave 1.05 USD available: 10 requests at 0.10 fit, the 11th does not
            c.ledger.charge(alice_id, c.ledger.account(alice_id).available - 1_050_000, key="x")
            before = c.ledger.account(alice_id)
            codes = [
                client.get("/api/v1/gpu/proxy/pool/health", headers=alice).status_code
                for _ in range(14)
            ]
        after = c.ledger.account(alice_id)  # the app closed: every lease settled and released
    finally:
        c.close()
    assert codes[:10] == [200] * 10
    assert set(codes[10:]) == {402}
    assert after.total_charged - before.total_charged == 10 * 100_000
    assert after.available == before.available - 10 * 100_000
    assert after.available >= 0
    assert not [h for h in after.holds if h.hold_id.startswith("lease:")]


def test_no_fee_when_nothing_was_delivered(sqlite_settings: Settings, clock: FixedClock) -> None:
    tuned = dataclasses.replace(
        sqlite_settings,
        auth=dataclasses.replace(sqlite_settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(
            sqlite_settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
        proxy=dataclasses.replace(
            sqlite_settings.proxy, request_price=100_000, lease_amount=300_000
        ),
    )
    c = bootstrap(tuned, clock=clock)
    try:
        with TestClient(create_app(c)) as client:
            alice = _user(client, c, "alice@example.com", 100 * USD)
            gpu = _running(c, _rent(client, alice, 1))[0]
            instance = c.marketplace.get(uuid.UUID(gpu["id"]))
            asyncio.run(
                c.marketplace.providers["sandbox"].destroy(instance.provider_instance_id or "")
            )
            codes = [
                client.get(f"/api/v1/gpu/proxy/{gpu['id']}/health", headers=alice).status_code
                for _ in range(3)
            ]
        alice_id = c.users.by_email("alice@example.com").id
        fees = sum(
            e.data["amount"]
            for e in c.ledger.history(alice_id)
            if e.name == "HoldCaptured" and e.data["hold_id"].startswith("lease:")
        )
    finally:
        c.close()
    assert codes == [502, 502, 502]
    assert fees == 0
