"""Usage sessions: folded from the proxy's batched usage events, per credential and address."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
from grpclib.client import Channel
from litestar.testing import TestClient
from litestar.types import Receive, Scope, Send

from domain.instances import GpuInstance
from domain.usage import ProxyUsage
from infrastructure.readmodels.queries.usage_sessions import usage_sessions
from infrastructure.readmodels.rebuild import rebuild, verify
from infrastructure.readmodels.rebuild_sql import capable
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.cli import admin as admin_cli
from interfaces.cli import client as client_cli
from interfaces.grpc.generated import gpuproxy as pb
from interfaces.grpc.server import GrpcServer
from interfaces.http.app import create_app
from projections.ledger import BY_NAME
from tests.conftest import FixedClock
from tests.integration import test_models_support as models
from tests.integration.test_proxy_http import USD, _rent, _running, _user
from tests.support.http import JWT_SECRET
from tests.support.pg import env_of, free_port

PRICE = 1_000  # micro-USD per proxied request
ADDRESS = "x-test-address"  # the test's stand-in for the client's IP (see ``Addressed``)


class Addressed:
    """The app, with the scope's client address taken from a test header (default 10.0.0.1)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            address = headers.get(ADDRESS.encode(), b"10.0.0.1").decode()
            scope = {**scope, "client": (address, 40000)}  # type: ignore[typeddict-item]
        await self.app(scope, receive, send)


@dataclasses.dataclass
class World:
    client: TestClient[Any]
    c: Container
    clock: FixedClock
    alice_id: str
    alice_key_id: str
    alice: dict[str, str]  # API key headers
    bob: dict[str, str]  # a login session (JWT)

    def proxy(self, n: int, address: str = "10.0.0.1", agent: str = "tests/1") -> None:
        headers = {**self.alice, ADDRESS: address, "User-Agent": agent}
        for _ in range(n):
            answer = self.client.get("/api/v1/gpu/proxy/pool/echo", headers=headers)
            assert answer.status_code == 200, answer.text

    def flush(self) -> None:
        self.client.app.state.proxy.flush()
        self.c.runner.catch_up()

    def sessions(self, headers: dict[str, str], query: str = "") -> Any:
        return self.client.get(f"/api/v1/usage/sessions{query}", headers=headers)


class InProcessApi:
    """The client CLI's ``Api`` over the in-process app (the CLI's HTTP path is tested in
    test_client_cli.py)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def get(self, path: str, **params: Any) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        answer = self.world.client.get(path, params=query, headers=self.world.alice)
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def world(settings: Settings, clock: FixedClock) -> Iterator[World]:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(
            settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
        providers=dataclasses.replace(
            settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
        proxy=dataclasses.replace(
            settings.proxy, request_price=PRICE, lease_amount=USD, usage_flush_interval=3600.0
        ),
    )
    c = bootstrap(tuned, clock=clock)
    try:
        with TestClient(create_app(c)) as client:
            client.app = Addressed(client.app)
            jwt = _user(client, c, "alice@example.com", 100 * USD)
            bob = _user(client, c, "bob@example.com", 100 * USD)
            _running(c, _rent(client, jwt, 2))
            # the setup's rents count as requests of alice's login session: not these tests'
            client.app.state.proxy.sessions.drain(clock.now)
            alice_id = c.users.by_email("alice@example.com").id
            key, plaintext = c.auth.keys.create(alice_id, "laptop")
            yield World(client, c, clock, alice_id, key.id, {"X-API-Key": plaintext}, bob)
    finally:
        c.close()


def test_api_key_requests_from_one_address_make_one_session(world: World) -> None:
    world.proxy(1)  # the first request places the lease (a hold: one event)
    head = world.c.events.head()
    world.proxy(24, agent="tests/2")
    # no event-store write per proxied request: at most the lease's settlement, which captures
    # the fees spent so far every few seconds (not per request)
    during = [e.name for e in world.c.events.read(head, 100)]
    assert set(during) <= {"CreditAccount.HoldCaptured"}
    assert len(during) <= 2
    world.flush()
    flushed = [e.name for e in world.c.events.read(head, 100)]
    assert flushed.count("ProxyUsage.Recorded") == 1  # the one flush
    page = world.sessions(world.alice).json()
    assert page["next_before"] is None
    [session] = page["sessions"]
    assert session["requests"] == 25
    assert session["client_id"] == world.alice_key_id
    assert session["credential"] == "apikey"
    assert session["ip_address"] == "10.0.0.1"
    assert session["user_agent"] == "tests/2"
    assert session["user_id"] == world.alice_id
    assert Decimal(session["credits_spent"]["proxy_fees"]) == Decimal("0.025")
    assert Decimal(session["credits_spent"]["total"]) == Decimal("0.025")
    assert session["started_at"] <= session["ended_at"]
    assert session["duration_seconds"] >= 0


def test_more_than_idle_minutes_apart_opens_a_second_session(world: World) -> None:
    world.proxy(2)
    world.flush()
    world.clock.advance(minutes=29)
    world.proxy(3)
    world.flush()
    [one] = world.sessions(world.alice).json()["sessions"]
    assert one["requests"] == 5
    assert 29 * 60 - 1 < one["duration_seconds"] < 29 * 60 + 1
    world.clock.advance(minutes=31)
    world.proxy(4)
    world.flush()
    newer, older = world.sessions(world.alice).json()["sessions"]
    assert (newer["requests"], older["requests"]) == (4, 5)
    assert newer["started_at"] > older["ended_at"]


def test_two_addresses_make_two_sessions(world: World) -> None:
    world.proxy(2, address="10.0.0.1")
    world.proxy(3, address="192.0.2.7")
    world.flush()
    sessions = world.sessions(world.alice).json()["sessions"]
    assert {s["ip_address"]: s["requests"] for s in sessions} == {"10.0.0.1": 2, "192.0.2.7": 3}


def test_own_sessions_only_admins_see_anyones(world: World) -> None:
    world.proxy(2)
    world.flush()
    assert world.sessions(world.bob).json()["sessions"] == []
    assert world.sessions(world.bob, f"?user_id={world.alice_id}").status_code == 403
    assert world.sessions(world.bob, "?email=alice@example.com").status_code == 403
    world.c.users.set_admin("bob@example.com")
    for query in (f"?user_id={world.alice_id}", "?email=alice@example.com"):
        answer = world.sessions(world.bob, query)
        assert answer.status_code == 200, answer.text
        assert [s["requests"] for s in answer.json()["sessions"]] == [2]
    both = world.sessions(world.bob, f"?user_id={world.alice_id}&email=alice@example.com")
    assert both.status_code == 400


def test_paging_newest_first(world: World) -> None:
    for i in range(5):
        world.proxy(i + 1, address=f"198.51.100.{i}")
        world.flush()
    first = world.sessions(world.alice, "?limit=2").json()
    assert [s["requests"] for s in first["sessions"]] == [5, 4]
    second = world.sessions(world.alice, f"?limit=2&before={first['next_before']}").json()
    assert [s["requests"] for s in second["sessions"]] == [3, 2]
    third = world.sessions(world.alice, f"?limit=2&before={second['next_before']}").json()
    assert [s["requests"] for s in third["sessions"]] == [1]
    assert third["next_before"] is None


def _rows(c: Container, table: str = "usage_sessions") -> list[tuple[Any, ...]]:
    with c.db.read() as tx:
        return sorted(tuple(r) for r in tx.fetchall(f"SELECT * FROM {table}"))


def _rent_with(world: World, headers: dict[str, str]) -> str:
    """Rent the cheapest sandbox offer over REST with ``headers``; running; its id."""
    offers = world.client.get("/api/v1/gpu/instances?provider=sandbox", headers=headers).json()
    offer = min(offers["offers"], key=lambda o: Decimal(o["price_per_hour"]))
    answer = world.client.post(
        f"/api/v1/gpu/instances/sandbox/{offer['id']}", json={}, headers=headers
    )
    assert answer.status_code == 201, answer.text
    [gpu] = _running(world.c, [answer.json()["instance"]])
    return str(gpu["id"])


def _captured(c: Container, instance_id: str) -> int:
    """What metering took for the instance: its hold captures (key ``meter:<id>:<due>``)."""
    events = c.events.read(0, 100_000)
    return sum(
        int(e.data["amount"])
        for e in events
        if e.name == "CreditAccount.HoldCaptured"
        and str(e.data["key"]).startswith(f"meter:{instance_id}:")
    )


def _spent(session: dict[str, Any]) -> dict[str, Decimal]:
    return {kind: Decimal(usd) for kind, usd in session["credits_spent"].items()}


def test_gpu_time_counts_in_the_session_that_rented(world: World) -> None:
    _, other = world.c.auth.keys.create(world.alice_id, "desktop")
    second = {"X-API-Key": other}
    instance_id = _rent_with(world, world.alice)  # the rent request: one of the session's
    world.proxy(3)
    world.client.get("/api/v1/gpu/proxy/pool/echo", headers=second)  # same address, other key
    world.flush()  # the rent's tally is flushed before time moves on
    world.clock.advance(seconds=90)
    asyncio.run(world.c.jobs().meter_all())
    world.clock.advance(seconds=60)
    asyncio.run(world.c.jobs().meter_all())
    world.c.runner.catch_up()
    captured = _captured(world.c, instance_id)
    gpu = world.c.marketplace.get(UUID(instance_id))
    assert captured == gpu.billed == gpu.price_per_hour * 150 // 3600 > 0
    assert (gpu.credential, gpu.address) == (f"apikey:{world.alice_key_id}", "10.0.0.1")
    sessions = world.sessions(world.alice).json()["sessions"]
    by_client = {s["client_id"]: s for s in sessions}
    renter = by_client[world.alice_key_id]
    assert renter["requests"] == 4  # the rent and three proxied requests
    spent = _spent(renter)
    assert spent["gpu_time"] == Decimal(captured) / 1_000_000
    assert spent["proxy_fees"] == Decimal("0.003")
    assert spent["total"] == spent["proxy_fees"] + spent["model_predictions"] + spent["gpu_time"]
    [other_session] = [s for k, s in by_client.items() if k != world.alice_key_id]
    assert _spent(other_session)["gpu_time"] == 0
    assert _spent(other_session)["total"] == Decimal("0.001")


def test_gpu_time_goes_to_the_session_open_at_the_rent_not_a_later_one(world: World) -> None:
    instance_id = _rent_with(world, world.alice)
    world.flush()
    world.clock.advance(minutes=45)  # past the idle time: the next request opens a new session
    world.proxy(2)
    world.flush()
    asyncio.run(world.c.jobs().meter_all())
    world.c.runner.catch_up()
    billed = world.c.marketplace.get(UUID(instance_id)).billed
    assert billed > 0
    newer, older = world.sessions(world.alice).json()["sessions"]
    assert (newer["requests"], older["requests"]) == (2, 1)
    assert _spent(older)["gpu_time"] == Decimal(billed) / 1_000_000
    assert _spent(newer)["gpu_time"] == 0


def test_reserve_counts_its_gpu_time_in_the_session(world: World) -> None:
    answer = world.client.post(
        "/api/v1/gpu/instances/reserve",
        json={"count": 1, "provider": "sandbox"},
        headers=world.alice,
    )
    assert answer.status_code == 201, answer.text
    [member] = answer.json()["reservation"]["instances"]
    world.flush()
    world.clock.advance(seconds=120)
    asyncio.run(world.c.jobs().meter_all())
    world.c.runner.catch_up()
    gpu = world.c.marketplace.get(UUID(str(member)))
    assert gpu.credential == f"apikey:{world.alice_key_id}"
    assert gpu.billed > 0
    [session] = world.sessions(world.alice).json()["sessions"]
    assert session["requests"] == 1
    assert _spent(session)["gpu_time"] == Decimal(gpu.billed) / 1_000_000


def test_rebuild_and_verify_give_the_live_rows(world: World) -> None:
    projection = BY_NAME["usage_sessions"]
    world.proxy(2)
    world.proxy(1, address="192.0.2.7")
    world.flush()
    world.clock.advance(minutes=45)
    world.proxy(3)
    world.flush()
    world.clock.advance(minutes=10)
    world.proxy(1)  # extends the second session: a later flush updates a row
    _rent_with(world, world.alice)  # a rental in it, billed below
    world.flush()
    world.clock.advance(minutes=2)
    asyncio.run(world.c.jobs().meter_all())
    world.c.runner.catch_up()
    live = _rows(world.c)
    assert len(live) == 3
    rentals = BY_NAME["usage_rentals"]
    live_rentals = _rows(world.c, "usage_rentals")
    assert len(live_rentals) == 3  # the setup's two and this one
    assert sum(r[-1] for r in live_rentals) > 0  # gpu_fees billed
    before = world.sessions(world.alice).json()
    assert any(Decimal(s["credits_spent"]["gpu_time"]) > 0 for s in before["sessions"])
    methods = ["python", "sql"] if capable(world.c.db, world.c.events) else ["python"]
    assert world.c.db.dialect == "sqlite" or methods == ["python", "sql"]  # the SQL path too
    for method in methods:
        checked = verify(world.c.db, world.c.events, [projection, rentals], method=method)  # type: ignore[arg-type]
        assert [(v.ok, v.rows) for v in checked] == [(True, 3), (True, 3)], method
        rebuild(world.c.db, world.c.events, [projection, rentals], method=method)  # type: ignore[arg-type]
        assert _rows(world.c) == live, method
        assert _rows(world.c, "usage_rentals") == live_rentals, method
        assert world.sessions(world.alice).json() == before, method


def test_usage_events_recorded_before_sessions_still_load(world: World) -> None:
    old = ProxyUsage(process_id="old", rows=[], at=datetime(2026, 1, 1, tzinfo=UTC))
    [recorded] = old.collect_events()
    for field in ("sessions", "idle_minutes"):  # as stored before these fields existed
        del recorded.__dict__[field]
    stored = world.c.app.mapper.to_stored_event(recorded)
    assert b"sessions" not in stored.state
    world.c.app.recorder.insert_events([stored])
    loaded = world.c.app.repository.get(old.id)
    assert (loaded.sessions, loaded.idle_minutes, loaded.process_id) == ([], 0, "old")
    world.proxy(1)
    world.flush()  # the runner folds the old event next to a new one
    assert [s["requests"] for s in world.sessions(world.alice).json()["sessions"]] == [1]


def test_rentals_recorded_before_callers_were_kept_still_load(world: World) -> None:
    old = GpuInstance(
        instance_id=uuid4(),
        owner=world.alice_id,
        provider="sandbox",
        offer_id="o-1",
        gpu_model="A100",
        num_gpus=1,
        price_per_hour=1_000_000,
        provider_price_per_hour=900_000,
        hold_id="gpu:old:1",
        image="img",
        at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    [recorded] = old.collect_events()
    for field in ("credential", "address"):  # as stored before these fields existed
        del recorded.__dict__[field]
    stored = world.c.app.mapper.to_stored_event(recorded)
    assert b"credential" not in stored.state
    world.c.app.recorder.insert_events([stored])
    loaded = world.c.app.repository.get(old.id)
    assert (loaded.credential, loaded.address, loaded.owner) == ("", "", world.alice_id)
    world.c.runner.catch_up()
    with world.c.db.read() as tx:
        row = tx.fetchone(
            "SELECT credential, address FROM usage_rentals WHERE instance_id = ?", (str(old.id),)
        )
    assert row is not None
    assert tuple(row) == ("", "")


def test_client_and_admin_cli_sessions(
    world: World,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    world.proxy(3, agent="cli-test/1")
    world.flush()
    capsys.readouterr()
    args = client_cli.build_parser().parse_args(["sessions", "--json", "--limit", "5"])
    client_cli.COMMANDS[args.command](InProcessApi(world), args)
    page = json.loads(capsys.readouterr().out)
    assert [s["requests"] for s in page["sessions"]] == [3]
    args = client_cli.build_parser().parse_args(["sessions"])
    client_cli.COMMANDS[args.command](InProcessApi(world), args)
    table = capsys.readouterr().out  # not a terminal: TSV with whole values
    assert world.alice_key_id in table
    assert "cli-test/1" in table
    assert "0.003" in table

    for key, value in env_of(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no stray .env
    assert admin_cli.main(["sessions", "alice@example.com", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == page
    assert admin_cli.main(["sessions", "alice@example.com"]) == 0
    assert world.alice_key_id in capsys.readouterr().out
    with pytest.raises(SystemExit) as unknown:
        admin_cli.main(["sessions", "nobody@example.com"])
    assert unknown.value.code == 1  # the operation failed
    with pytest.raises(SystemExit) as bad:
        admin_cli.main(["sessions", "alice@example.com", "--limit", "0"])
    assert bad.value.code == 2  # bad arguments


def test_model_predictions_count_with_their_fees(
    sqlite_settings: Settings, clock: FixedClock
) -> None:
    with models.make_world(
        sqlite_settings,
        clock,
        models=dataclasses.replace(
            sqlite_settings.models,
            predict_price=10_000,
            lease_amount=50_000,
            usage_flush_interval=3600.0,
        ),
    ) as w:
        content, _ = models.dense_onnx()
        assert w.upload("alice", "p.onnx", content, name="p").status_code == 201
        for _ in range(7):
            assert w.predict("alice", "p", {"input": [1, 2, 3, 4]}).status_code == 200
        w.c.model_service().flush()
        w.c.runner.catch_up()
        answer = w.client.get("/api/v1/usage/sessions", headers=w.h("alice"))
        [session] = answer.json()["sessions"]
        assert session["requests"] == 7
        assert session["credential"] == "apikey"
        spent = {kind: Decimal(usd) for kind, usd in session["credits_spent"].items()}
        assert spent == {
            "proxy_fees": Decimal(0),
            "model_predictions": Decimal("0.07"),
            "gpu_time": Decimal(0),
            "total": Decimal("0.07"),
        }


def test_grpc_rent_counts_in_the_callers_session(settings: Settings, clock: FixedClock) -> None:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET),
        providers=dataclasses.replace(
            settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
        proxy=dataclasses.replace(settings.proxy, usage_flush_interval=3600.0),
        http=dataclasses.replace(settings.http, host="127.0.0.1"),
        grpc=dataclasses.replace(settings.grpc, port=free_port()),
    )
    c = bootstrap(tuned, clock=clock)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    runtime = create_app(c).state.proxy
    server = GrpcServer(c, runtime)
    try:
        user = c.users.create("gail@example.com", "correct-horse-battery", "Gail")
        c.ledger.open_account(user.id)
        c.ledger.grant(user.id, 100 * USD, key="seed-gail")
        key, plaintext = c.auth.keys.create(user.id, "grpc")
        run(server.start())

        async def rent() -> str:
            async with Channel("127.0.0.1", tuned.grpc.port) as channel:
                stub = pb.GpuProxyServiceStub(channel, metadata={"x-api-key": plaintext})
                request = pb.CreateGpuInstanceRequest(
                    provider="sandbox", instance_id="sbx-a4000-1x-de"
                )
                return str((await stub.create_gpu_instance(request)).instance_id)

        instance_id = run(rent())
        runtime.flush()
        gpu = c.marketplace.get(UUID(instance_id))
        assert (gpu.credential, gpu.address) == (f"apikey:{key.id}", "127.0.0.1")
        clock.advance(seconds=60)
        c.marketplace.meter(gpu.id)
        c.runner.catch_up()
        billed = c.marketplace.get(gpu.id).billed
        assert billed > 0
        [session] = usage_sessions(c.db, user.id)
        assert (session.credential, session.address, session.requests) == (
            f"apikey:{key.id}",
            "127.0.0.1",
            1,
        )
        assert session.gpu_fees == billed
        assert session.credits_spent == billed
    finally:
        run(server.stop())
        run(runtime.aclose())
        run(c.aclose_providers())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        c.close()
