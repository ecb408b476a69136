"""The gRPC API against a real ``aiserve-gpuproxyd`` process (SQLite; one on PostgreSQL + TLS).

Wire compatibility is proved with Google's implementation: ``gpuproxy_pb2``/``_pb2_grpc`` are
generated from ``protos/gpuproxy.proto`` by grpcio-tools at test time and call every RPC;
the seed README's Python client example runs as written (its ``proto`` package generated the
same way). grpclib's own client covers the error mapping and the streams; the CLI's
``--grpc`` mode is checked against its REST output. An in-process server (same code, a
background event loop) covers the rate limit and a provider outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import math
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from infrastructure.settings import Settings, load_settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.cli.client import main as cli_main
from interfaces.grpc.generated import gpuproxy as pb
from interfaces.grpc.server import GrpcServer
from interfaces.http.app import create_app
from tests.fake_servers.stripe import FakeStripe, running_stripe
from tests.support.http import JWT_SECRET, ROOT, env_of, server_process
from tests.support.pg import free_port

USD = 1_000_000
PASSWORD = "correct-horse-battery"
PROTO = ROOT / "protos" / "gpuproxy.proto"


@dataclasses.dataclass(frozen=True)
class World:
    url: str
    grpc_port: int
    keys: dict[str, str]  # user -> API key
    emails: dict[str, str]
    stripe: FakeStripe

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def meta(self, user: str) -> list[tuple[str, str]]:
        return [("x-api-key", self.keys[user])]


def seed_users(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """alice and bob (100 USD), carol (100 USD, 5MIN limit 0.01 USD), dave (no credits)."""
    c = bootstrap(settings)
    keys, emails = {}, {}
    try:
        for name, credits in (("alice", 100), ("bob", 100), ("carol", 100), ("dave", 0)):
            email = f"{name}@example.com"
            user = c.users.create(email, PASSWORD, name.title())
            c.ledger.open_account(user.id)
            if credits:
                c.ledger.grant(user.id, credits * USD, key=f"seed-{name}")
            keys[name] = c.auth.keys.create(user.id, "grpc-test")[1]
            emails[name] = email
            if name == "carol":
                c.ledger.set_limits(user.id, {"5MIN": 10_000}, actor="test", reason="tiny")
        c.runner.catch_up()
    finally:
        c.close()
    return keys, emails


def server_env(settings: Settings, grpc_port: int, **extra: str) -> dict[str, str]:
    return {
        **env_of(settings),
        "GRPC_PORT": str(grpc_port),
        "SANDBOX_PROVISIONING_DELAY": "0",
        "INSTANCE_POLL_SECONDS": "0.1",
        "GUARDRAILS_ENABLED": "true",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "LOG_LEVEL": "WARNING",
        **extra,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("grpc")
    settings = load_settings(
        {"DATA_DIR": str(root / "data"), "JWT_SECRET": JWT_SECRET}, env_file=None
    )
    keys, emails = seed_users(settings)
    port = free_port()
    with running_stripe() as stripe:
        env = server_env(
            settings, port, STRIPE_SECRET_KEY=stripe.secret_key, STRIPE_API_BASE=stripe.url
        )
        with server_process(env, log_file=root / "server.log") as url:
            yield World(url, port, keys, emails, stripe)


@pytest.fixture(scope="module")
def google(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, ModuleType]]:
    """``gpuproxy_pb2`` and ``gpuproxy_pb2_grpc`` generated now by grpcio-tools."""
    out = tmp_path_factory.mktemp("pb2")
    protoc(out, PROTO.parent, PROTO.name)
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("gpuproxy_pb2"), importlib.import_module("gpuproxy_pb2_grpc")
    finally:
        sys.path.remove(str(out))


def protoc(out: Path, include: Path, proto: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            proto,
        ],
        check=True,
        cwd=include,
    )


def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def grpclib_run(world: World, user: str | None, work: Callable[[Any], Any]) -> Any:
    """Run ``work(stub)`` with grpclib's client (the stub carries ``user``'s API key)."""

    async def go() -> Any:
        async with Channel("127.0.0.1", world.grpc_port) as channel:
            metadata = {"x-api-key": world.keys[user]} if user else None
            return await work(pb.GpuProxyServiceStub(channel, metadata=metadata))

    return asyncio.run(go())


def code_of(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    return error.code(), error.details()


# ---------------------------------------------------------------- Google's client


def test_google_client_calls_every_rpc(world: World, google: tuple[Any, Any]) -> None:
    pb2, pb2_grpc = google
    service = pb2.DESCRIPTOR.services_by_name["GPUProxyService"]
    called: set[str] = set()
    with grpc.insecure_channel(world.target) as channel:
        stub = pb2_grpc.GPUProxyServiceStub(channel)

        def rpc(name: str, request: Any, user: str | None = "alice", **kw: Any) -> Any:
            called.add(name)
            meta = world.meta(user) if user else None
            return getattr(stub, name)(request, metadata=meta, timeout=60, **kw)

        health = rpc("HealthCheck", pb2.HealthCheckRequest(), user=None)
        assert health.status == "ok"
        assert health.details["service"] == "gpuproxy-grpc"
        login = rpc(
            "Login", pb2.LoginRequest(email=world.emails["alice"], password=PASSWORD), user=None
        )
        assert login.token
        assert login.email == world.emails["alice"]
        bearer = [("authorization", f"Bearer {login.token}")]
        key = stub.CreateAPIKey(pb2.CreateAPIKeyRequest(name="from-token", token=login.token))
        called.add("CreateAPIKey")
        assert key.api_key
        assert key.name == "from-token"
        assert key.created_at > 0
        key2 = stub.CreateAPIKey(pb2.CreateAPIKeyRequest(name="from-meta"), metadata=bearer)
        assert key2.api_key != key.api_key

        offers = rpc(
            "ListGPUInstances", pb2.ListGPUInstancesRequest(provider="sandbox", min_vram=16)
        )
        assert offers.total_count == len(offers.instances) > 0
        assert all(o.vram_gb >= 16 and o.provider == "sandbox" for o in offers.instances)
        cheapest = min(offers.instances, key=lambda o: o.price_per_hour)
        created = rpc(
            "CreateGPUInstance",
            pb2.CreateGPUInstanceRequest(
                provider="sandbox", instance_id=cheapest.id, ports=[8000], env={"A": "1"}
            ),
        )
        assert created.status == "running", created
        assert created.rental.offer_id == cheapest.id
        iid = created.instance_id
        shown = rpc(
            "GetGPUInstance", pb2.GetGPUInstanceRequest(provider="sandbox", instance_id=iid)
        )
        assert shown.instance.id == iid
        assert shown.instance.status == "running"
        assert shown.instance.metadata["contract_id"]
        endpoint = shown.rental.endpoint
        assert endpoint.startswith("http://127.0.0.1:")
        assert eventually(  # the rentals list is a read model
            lambda: iid in [r.id for r in rpc("ListRentals", pb2.ListRentalsRequest()).rentals]
        )

        # The proxy: wait until the instance is in the read model the balancer uses.
        def reachable() -> bool:  # the proxy reads the instances read model (cached 1 s)
            probe = pb2.ProxyRequestMessage(
                protocol="http", method="GET", target_url=f"{endpoint}/health"
            )
            try:
                return bool(rpc("ProxyRequest", probe).status_code == 200)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                return False

        assert eventually(reachable)
        answer = rpc(
            "ProxyRequest",
            pb2.ProxyRequestMessage(
                protocol="http",
                target_url=f"{endpoint}/echo",
                method="POST",
                headers={"X-Custom": "yes", "Content-Type": "application/json"},
                body=b'{"prompt": "Hello"}',
                timeout=30,
            ),
        )
        assert answer.status_code == 200, answer
        echoed = json.loads(answer.body)
        assert echoed["json"] == {"prompt": "Hello"}
        assert echoed["headers"]["x-custom"] == "yes"
        assert "x-api-key" not in echoed["headers"]  # our credentials never travel on
        assert answer.instance_id == iid == answer.headers["x-gpuproxy-instance"]

        def requests() -> Iterator[Any]:
            for i in range(3):
                yield pb2.ProxyRequestMessage(
                    protocol="http", instance_id=iid, path="/echo", body=f"n{i}".encode()
                )

        called.add("StreamProxyRequest")
        frames = list(stub.StreamProxyRequest(requests(), metadata=world.meta("alice")))
        assert [f.sequence for f in frames if f.last] == [0, 1, 2]
        for seq in range(3):
            mine = [f for f in frames if f.sequence == seq]
            assert mine[0].status_code == 200
            assert mine[0].headers
            assert mine[-1].last
            assert not mine[-1].body
            body = b"".join(f.body for f in mine)
            assert json.loads(body)["body"] == f"n{seq}"

        strategy = rpc(
            "SetLoadBalancerStrategy",
            pb2.SetLoadBalancerStrategyRequest(strategy="least_connections"),
        )
        assert strategy.success
        assert strategy.strategy == "least_connections"
        got = rpc("GetLoadBalancerStrategy", pb2.GetLoadBalancerStrategyRequest())
        assert got.strategy == "least_connections"
        assert "round_robin" in got.available
        load = rpc("GetLoadInfo", pb2.GetLoadInfoRequest(type="all"))
        assert load.current_strategy == "least_connections"
        assert [p.provider for p in load.provider_load] == ["sandbox"]

        # Money: a Stripe payment (idempotent), then the history and the account stream.
        before = rpc("GetTransactions", pb2.GetTransactionsRequest(limit=5))
        newest = int(before.transactions[0].id)
        watch = stub.WatchAccount(
            pb2.WatchAccountRequest(after_id=newest), metadata=world.meta("alice"), timeout=30
        )
        called.add("WatchAccount")
        pay_meta = [*world.meta("alice"), ("idempotency-key", "grpc-pay-1")]
        paid = stub.CreatePayment(
            pb2.CreatePaymentRequest(
                amount=25.5, currency="USD", provider="stripe", payment_method="card:pm_card_visa"
            ),
            metadata=pay_meta,
        )
        called.add("CreatePayment")
        assert paid.status == "succeeded"
        assert paid.amount == 25.5
        assert not paid.replayed
        again = stub.CreatePayment(
            pb2.CreatePaymentRequest(
                amount=25.5, currency="USD", provider="stripe", payment_method="card:pm_card_visa"
            ),
            metadata=pay_meta,
        )
        assert again.payment_id == paid.payment_id
        assert again.replayed
        assert len(world.stripe.payment_intents) == 1
        moved = next(watch)
        assert int(moved.id) > newest
        assert moved.type == "grant"
        assert moved.amount == 25.5
        watch.cancel()
        payments = rpc("ListPayments", pb2.ListPaymentsRequest())
        assert [p.id for p in payments.payments] == [paid.payment_id]
        page = rpc("GetTransactions", pb2.GetTransactionsRequest(limit=2, offset=0))
        assert page.total_count >= 2
        assert len(page.transactions) == 2
        credits = rpc("GetCredits", pb2.GetCreditsRequest())
        assert credits.credits_total == 125.5
        assert credits.currency == "USD"
        usage = rpc("GetUsage", pb2.GetUsageRequest())
        assert usage.days
        assert sum(d.granted for d in usage.days) == 125.5

        spending = rpc("GetSpendingInfo", pb2.GetSpendingInfoRequest())
        assert spending.guard_rails_enabled
        assert len(spending.windows) == 17
        check = rpc("CheckSpendingLimit", pb2.CheckSpendingLimitRequest(amount=1.0))
        assert check.allowed
        assert not check.would_exceed

        reserved = rpc(
            "ReserveGPUs",
            pb2.ReserveGPUsRequest(
                count=3, provider="sandbox", max_price=2.0, gpu_model="RTX 3090"
            ),
        )
        # count is GPUs: the 1x and 2x RTX 3090 offers make 3 (not 3 instances, 4 GPUs)
        assert reserved.reserved_count == 3, reserved.message
        assert reserved.reservation.gpus == 3
        assert sorted(i.num_gpus for i in reserved.reserved_instances) == [1, 2]
        assert "3 GPU(s) on 2 instance(s)" in reserved.message
        assert reserved.reservation.state == "confirmed"
        assert all(i.metadata["contract_id"] for i in reserved.reserved_instances)
        rid = reserved.reservation.id
        shown_res = rpc("GetReservation", pb2.GetReservationRequest(reservation_id=rid))
        assert shown_res.reservation.instances == reserved.reservation.instances
        released = rpc("ReleaseReservation", pb2.ReleaseReservationRequest(reservation_id=rid))
        assert released.reservation.state == "released"

        code, details = code_of(lambda: rpc("SendCUICMessage", pb2.CUICMessageRequest()))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert "CUIC" in details
        called.add("StreamCUICMessage")
        stream = stub.StreamCUICMessage(
            iter([pb2.CUICMessageRequest()]), metadata=world.meta("alice")
        )
        code, _ = code_of(lambda: list(stream))
        assert code == grpc.StatusCode.UNIMPLEMENTED

        destroyed = rpc(
            "DestroyGPUInstance", pb2.DestroyGPUInstanceRequest(provider="sandbox", instance_id=iid)
        )
        assert destroyed.success
        assert destroyed.rental.state == "terminated"
    assert called == set(service.methods_by_name), set(service.methods_by_name) - called


README_EXAMPLE = """
import grpc
from proto import gpuproxy_pb2, gpuproxy_pb2_grpc

# Connect to server
channel = grpc.insecure_channel('localhost:9090')
stub = gpuproxy_pb2_grpc.GPUProxyServiceStub(channel)

# Login
login_response = stub.Login(gpuproxy_pb2.LoginRequest(
    email="user@example.com",
    password="password"
))

# Create metadata with token
metadata = [('authorization', f'Bearer {login_response.token}')]

# List GPU instances
instances = stub.ListGPUInstances(
    gpuproxy_pb2.ListGPUInstancesRequest(
        provider="all",
        min_vram=16
    ),
    metadata=metadata
)

print(f"Found {instances.total_count} instances")
"""


def test_seed_readme_python_example_runs(world: World, tmp_path: Path) -> None:
    """The seed README's client, as written; only the port and the account differ."""
    package = tmp_path / "proto"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "gpuproxy.proto").write_bytes(PROTO.read_bytes())
    protoc(tmp_path, tmp_path, "proto/gpuproxy.proto")
    script = (
        README_EXAMPLE.replace("localhost:9090", f"localhost:{world.grpc_port}")
        .replace("user@example.com", world.emails["bob"])
        .replace('password="password"', f'password="{PASSWORD}"')
    )
    (tmp_path / "example.py").write_text(textwrap.dedent(script))
    done = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    count = int(done.stdout.split()[1])
    assert done.stdout.strip() == f"Found {count} instances"
    assert count > 0


# ---------------------------------------------------------------- errors, streams


def test_errors_map_to_status_codes(world: World) -> None:
    async def check(stub: pb.GpuProxyServiceStub) -> dict[str, tuple[Status, str]]:
        out: dict[str, tuple[Status, str]] = {}

        async def expect(name: str, call: Any) -> None:
            try:
                await call
            except GRPCError as exc:
                out[name] = (exc.status, exc.message or "")
            else:
                out[name] = (Status.OK, "")

        bob = {"x-api-key": world.keys["bob"]}
        carol = {"x-api-key": world.keys["carol"]}
        dave = {"x-api-key": world.keys["dave"]}
        await expect("no credentials", stub.get_credits(pb.GetCreditsRequest(), metadata={}))
        await expect(
            "bad key", stub.get_credits(pb.GetCreditsRequest(), metadata={"x-api-key": "gp_x"})
        )
        await expect(
            "bad bearer",
            stub.get_credits(pb.GetCreditsRequest(), metadata={"authorization": "Bearer nope"}),
        )
        await expect(
            "bad login",
            stub.login(pb.LoginRequest(email=world.emails["bob"], password="wrong-password")),
        )
        await expect("empty login", stub.login(pb.LoginRequest()))
        for amount in (math.nan, math.inf, -1.0, 0.1234567, 0.0):
            await expect(
                f"check {amount}",
                stub.check_spending_limit(pb.CheckSpendingLimitRequest(amount=amount)),
            )
        await expect(
            "pay 1e-7", stub.create_payment(pb.CreatePaymentRequest(amount=1e-7, provider="stripe"))
        )
        await expect(
            "raw card",
            stub.create_payment(
                pb.CreatePaymentRequest(
                    amount=10, provider="stripe", payment_method="card:4111111111111111:12/30:123"
                )
            ),
        )
        await expect(
            "declined",
            stub.create_payment(
                pb.CreatePaymentRequest(
                    amount=10, provider="stripe", payment_method="card:pm_card_chargeDeclined"
                )
            ),
        )
        await expect("reserve 17", stub.reserve_gp_us(pb.ReserveGpUsRequest(count=17)))
        await expect(
            "bad strategy",
            stub.set_load_balancer_strategy(pb.SetLoadBalancerStrategyRequest(strategy="random")),
        )
        await expect(
            "bad protocol",
            stub.proxy_request(pb.ProxyRequestMessage(protocol="ftp", target_url="http://x/")),
        )
        await expect(
            "not an id", stub.get_gpu_instance(pb.GetGpuInstanceRequest(instance_id="vast-1"))
        )
        offers = await stub.list_gpu_instances(pb.ListGpuInstancesRequest(provider="sandbox"))
        cheap = min(offers.instances, key=lambda o: o.price_per_hour).id
        bobs = await stub.create_gpu_instance(
            pb.CreateGpuInstanceRequest(provider="sandbox", instance_id=cheap), metadata=bob
        )
        await expect(
            "not yours",
            stub.get_gpu_instance(pb.GetGpuInstanceRequest(instance_id=bobs.instance_id)),
        )
        await expect(
            "not yours destroy",
            stub.destroy_gpu_instance(pb.DestroyGpuInstanceRequest(instance_id=bobs.instance_id)),
        )
        await expect(
            "target not yours",
            stub.proxy_request(
                pb.ProxyRequestMessage(protocol="http", target_url=f"{bobs.rental.endpoint}/echo")
            ),
        )
        await expect(
            "no funds",
            stub.create_gpu_instance(
                pb.CreateGpuInstanceRequest(provider="sandbox", instance_id=cheap), metadata=dave
            ),
        )
        await expect(
            "guard rail",
            stub.create_gpu_instance(
                pb.CreateGpuInstanceRequest(provider="sandbox", instance_id=cheap), metadata=carol
            ),
        )
        verdict = await stub.check_spending_limit(
            pb.CheckSpendingLimitRequest(amount=1.0), metadata=carol
        )
        out["check carol"] = (Status.OK, verdict.reason)
        assert not verdict.allowed
        assert [w.window for w in verdict.would_exceed] == ["5MIN"]
        await expect("cuic", stub.send_cuic_message(pb.CuicMessageRequest()))
        anonymous = pb.GpuProxyServiceStub(stub.channel)

        async def one_request() -> Any:
            yield pb.ProxyRequestMessage(protocol="http", instance_id=bobs.instance_id)

        async def drain(frames: Any) -> None:
            async for _ in frames:
                pass

        await expect("stream no credentials", drain(anonymous.stream_proxy_request(one_request())))
        await expect(
            "watch no credentials", drain(anonymous.watch_account(pb.WatchAccountRequest()))
        )
        await stub.destroy_gpu_instance(
            pb.DestroyGpuInstanceRequest(instance_id=bobs.instance_id), metadata=bob
        )
        return out

    out = grpclib_run(world, "alice", check)
    expected = {
        "no credentials": Status.UNAUTHENTICATED,
        "bad key": Status.UNAUTHENTICATED,
        "bad bearer": Status.UNAUTHENTICATED,
        "bad login": Status.UNAUTHENTICATED,
        "empty login": Status.INVALID_ARGUMENT,
        "check nan": Status.INVALID_ARGUMENT,
        "check inf": Status.INVALID_ARGUMENT,
        "check -1.0": Status.INVALID_ARGUMENT,
        "check 0.1234567": Status.INVALID_ARGUMENT,
        "check 0.0": Status.INVALID_ARGUMENT,
        "pay 1e-7": Status.INVALID_ARGUMENT,
        "raw card": Status.INVALID_ARGUMENT,
        "declined": Status.FAILED_PRECONDITION,
        "reserve 17": Status.INVALID_ARGUMENT,
        "bad strategy": Status.INVALID_ARGUMENT,
        "bad protocol": Status.INVALID_ARGUMENT,
        "not an id": Status.INVALID_ARGUMENT,
        "not yours": Status.NOT_FOUND,
        "not yours destroy": Status.NOT_FOUND,
        "target not yours": Status.PERMISSION_DENIED,
        "no funds": Status.FAILED_PRECONDITION,
        "guard rail": Status.FAILED_PRECONDITION,
        "check carol": Status.OK,
        "cuic": Status.UNIMPLEMENTED,
        "stream no credentials": Status.UNAUTHENTICATED,
        "watch no credentials": Status.UNAUTHENTICATED,
    }
    assert {k: v[0] for k, v in out.items()} == expected, out
    assert "Insufficient credits" in out["no funds"][1]
    assert "5MIN: limit 0.010000" in out["guard rail"][1]  # the violations are in the message
    assert "5MIN" in out["check carol"][1]
    assert "4111111111111111" not in out["raw card"][1]
    assert "more than 6 decimal" in out["check 0.1234567"][1]


def test_card_numbers_in_payment_text_are_invalid_argument(world: World) -> None:
    """gRPC payments refuse a card number in the idempotency key or the method token, as REST
    does (``domain.pan``), without echoing it."""

    async def check(stub: pb.GpuProxyServiceStub) -> dict[str, tuple[Status, str]]:
        out: dict[str, tuple[Status, str]] = {}
        alice = {"x-api-key": world.keys["alice"]}
        for name, method, key in (
            ("key", "card:pm_card_visa", "5555555555554444"),
            ("spaced key", "card:pm_card_visa", "5555 5555 5555 4444"),
            ("token", "card:pm_4012888888881881", "grpc-pan-token"),
        ):
            request = pb.CreatePaymentRequest(amount=10, provider="stripe", payment_method=method)
            try:
                await stub.create_payment(request, metadata={**alice, "idempotency-key": key})
            except GRPCError as exc:
                out[name] = (exc.status, exc.message or "")
            else:
                out[name] = (Status.OK, "")
        return out

    intents = len(world.stripe.payment_intents)
    out = grpclib_run(world, "alice", check)
    assert {k: v[0] for k, v in out.items()} == dict.fromkeys(out, Status.INVALID_ARGUMENT), out
    assert "Idempotency-Key" in out["key"][1]
    assert "X-Preferred-Payment" in out["token"][1]
    for _, message in out.values():
        assert "card number" in message
        assert "5555" not in message
        assert "4012888888881881" not in message
    assert len(world.stripe.payment_intents) == intents  # nothing reached the processor


def test_streams_over_grpclib(world: World) -> None:
    """A chunked upstream body arrives as chunks; the account stream sees a new movement."""

    async def work(stub: pb.GpuProxyServiceStub) -> None:
        offers = await stub.list_gpu_instances(pb.ListGpuInstancesRequest(provider="sandbox"))
        cheap = min(offers.instances, key=lambda o: o.price_per_hour).id
        gpu = await stub.create_gpu_instance(
            pb.CreateGpuInstanceRequest(provider="sandbox", instance_id=cheap, idempotency_key="s")
        )
        health = pb.ProxyRequestMessage(
            protocol="http", instance_id=gpu.instance_id, method="GET", path="/health"
        )
        for _ in range(300):  # the proxy reads the instances read model (cached for 1 s)
            try:
                await stub.proxy_request(health)
                break
            except GRPCError as exc:
                if exc.status != Status.NOT_FOUND:
                    raise
                await asyncio.sleep(0.05)
        infer = await stub.proxy_request(
            pb.ProxyRequestMessage(
                protocol="openinference",
                instance_id=gpu.instance_id,
                model="demo",
                body=b'{"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", '
                b'"data": [1, 2, 3]}]}',
            )
        )
        assert infer.status_code == 200, infer
        assert json.loads(infer.body)["outputs"][0]["data"] == [3, 5, 7]
        ready = await stub.proxy_request(
            pb.ProxyRequestMessage(
                protocol="openinference",
                target_url=gpu.rental.endpoint,
                path="/v2/health/ready",
                method="GET",
            )
        )
        assert ready.status_code == 200
        mcp = await stub.proxy_request(
            pb.ProxyRequestMessage(
                protocol="mcp", instance_id=gpu.instance_id, body=b'{"method": "tools/list"}'
            )
        )
        assert [t["name"] for t in json.loads(mcp.body)["result"]["tools"]] == ["echo"]
        for bad in (
            pb.ProxyRequestMessage(protocol="mcp", instance_id=gpu.instance_id, body=b"[1"),
            pb.ProxyRequestMessage(protocol="openinference", instance_id=gpu.instance_id),
            pb.ProxyRequestMessage(protocol="http", instance_id=gpu.instance_id, timeout=-1),
            pb.ProxyRequestMessage(protocol="http"),
        ):
            with pytest.raises(GRPCError) as refused:
                await stub.proxy_request(bad)
            assert refused.value.status == Status.INVALID_ARGUMENT, bad
        slow = pb.ProxyRequestMessage(
            protocol="http", instance_id=gpu.instance_id, path="/echo?delay_ms=3000", timeout=1
        )
        with pytest.raises(GRPCError) as late:
            await stub.proxy_request(slow)
        assert late.value.status == Status.DEADLINE_EXCEEDED

        async def requests() -> Any:
            yield pb.ProxyRequestMessage(
                protocol="http", instance_id=gpu.instance_id, method="GET", path="/stream?chunks=4"
            )
            yield pb.ProxyRequestMessage(
                protocol="https", instance_id=gpu.instance_id, method="GET", path="/health"
            )

        frames = [f async for f in stub.stream_proxy_request(requests())]
        first = [f for f in frames if f.sequence == 0]
        assert first[0].status_code == 200
        assert not first[0].body
        assert len([f for f in first if f.body]) >= 1
        assert first[-1].last
        assert b"".join(f.body for f in first).count(b"\n") == 4
        second = [f for f in frames if f.sequence == 1]
        assert second[0].status_code == 200
        assert second[-1].last

        watch = stub.watch_account(pb.WatchAccountRequest(after_id=1))
        async with contextlib.aclosing(watch) as history:  # type: ignore[type-var]
            older = await asyncio.wait_for(anext(history), 10)
        assert int(older.id) > 1
        assert older.currency == "USD"
        await stub.destroy_gpu_instance(pb.DestroyGpuInstanceRequest(instance_id=gpu.instance_id))

    grpclib_run(world, "alice", work)


def test_health_and_reflection(world: World) -> None:
    from grpclib.health.v1.health_grpc import HealthStub
    from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse
    from grpclib.reflection.v1.reflection_grpc import ServerReflectionStub
    from grpclib.reflection.v1.reflection_pb2 import ServerReflectionRequest

    async def go() -> None:
        async with Channel("127.0.0.1", world.grpc_port) as channel:
            health = HealthStub(channel)
            for service in ("", "gpuproxy.GPUProxyService"):
                answer = await health.Check(HealthCheckRequest(service=service))
                assert answer is not None
                assert answer.status == HealthCheckResponse.SERVING
            async with ServerReflectionStub(channel).ServerReflectionInfo.open() as call:
                await call.send_message(ServerReflectionRequest(list_services=""))
                listed = await call.recv_message()
                await call.send_message(
                    ServerReflectionRequest(file_containing_symbol="gpuproxy.GPUProxyService"),
                    end=True,
                )
                found = await call.recv_message()
        assert listed is not None
        assert found is not None
        names = {s.name for s in listed.list_services_response.service}
        assert {"gpuproxy.GPUProxyService", "grpc.health.v1.Health"} <= names
        from google.protobuf.descriptor_pb2 import FileDescriptorProto

        files = [
            FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        ]
        assert files[0].name == "gpuproxy.proto"
        assert "ReserveGPUs" in [m.name for m in files[0].service[0].method]

    asyncio.run(go())


# ---------------------------------------------------------------- the CLI


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def test_cli_grpc_mode_matches_rest(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str, grpc_mode: bool = True) -> Result:
        base = ["-server", world.url, "-key", world.keys["bob"]]
        if grpc_mode:
            base += ["--grpc", "--grpc-target", world.target]
        capsys.readouterr()
        try:
            code = cli_main([*base, *argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def both(*argv: str) -> tuple[Any, Any]:
        over_grpc, over_rest = run(*argv), run(*argv, grpc_mode=False)
        assert over_grpc.code == over_rest.code == 0, (over_grpc, over_rest)
        return json.loads(over_grpc.out), json.loads(over_rest.out)

    listed, rest = both("list", "sandbox", "--max-price", "0.40", "--limit", "5", "--json")
    fields = ("id", "provider", "gpu_model", "num_gpus", "price_per_hour", "location")
    assert [[o[f] for f in fields] for o in listed["offers"]] == [
        [o[f] for f in fields] for o in rest["offers"]
    ]
    assert [o["vram_gb"] for o in listed["offers"]] == [round(o["vram_gb"]) for o in rest["offers"]]
    assert listed["count"] == 5
    created = run(
        "create", "sandbox", listed["offers"][0]["id"], "--idempotency-key", "k1", "--json"
    )
    assert created.code == 0, created
    instance = json.loads(created.out)["instance"]
    assert instance["state"] == "running"
    shown, shown_rest = both("instance", "sandbox", instance["id"], "--json")
    for name in ("id", "offer_id", "state", "price_per_hour", "endpoint", "requested_at"):
        assert shown["instance"][name] == shown_rest["instance"][name], name
    assert eventually(lambda: instance["id"] in run("rentals").out)
    credits, credits_rest = both("credits", "--json")
    assert credits == credits_rest
    history, history_rest = both("transactions", "--limit", "5", "--json")
    assert history["transactions"] == history_rest["transactions"]
    spend, spend_rest = both("spending", "--json")
    for name in ("window_spent", "held", "limits", "remaining", "exceeded"):
        assert spend[name] == spend_rest[name], name
    assert run("lb-strategy", "least_connections").out.strip() == "strategy: least_connections"
    assert run("lb-strategy", grpc_mode=False).out.strip() == "strategy: least_connections"
    assert eventually(lambda: instance["id"] in run("load", "server").out)
    assert eventually(
        lambda: run("proxy", "http", instance["id"], "-X", "GET", "--path", "/health").code == 0
    )
    proxied = run("proxy", "http", instance["id"], "--path", "/echo", "--data", '{"a": 1}')
    assert proxied.code == 0, proxied
    assert json.loads(proxied.out)["json"] == {"a": 1}
    assert f"200 from instance {instance['id']}" in proxied.err
    paid = run("pay", "12.34", "--method", "card:pm_card_visa", "--idempotency-key", "p1", "--json")
    assert paid.code == 0, paid
    assert json.loads(paid.out)["amount"] == "12.340000"
    assert eventually(lambda: "12.340000" in run("payments").out)
    reserved = run("reserve", "1", "--provider", "sandbox", "--json")
    assert reserved.code == 0, reserved
    reservation = json.loads(reserved.out)
    assert reservation["state"] == "confirmed"
    assert run("release", reservation["id"]).code == 0
    destroyed = run("destroy", "sandbox", instance["id"], "--json")
    assert json.loads(destroyed.out)["instance"]["state"] == "terminated"
    refused = run("instance", "sandbox", "00000000-0000-4000-8000-000000000000")
    assert refused.code == 1
    assert refused.err.startswith("error: NOT_FOUND")
    down = cli_main(["-key", "k", "--grpc", "--grpc-target", f"127.0.0.1:{free_port()}", "credits"])
    captured = capsys.readouterr()
    assert down == 1
    assert "cannot reach" in captured.err
    assert captured.err.count("\n") == 1


# ---------------------------------------------------------------- in process


@contextlib.contextmanager
def in_process(settings: Settings) -> Iterator[tuple[Container, int]]:
    """The gRPC server of one process, started in a background event loop."""
    port = free_port()
    tuned = dataclasses.replace(
        settings,
        http=dataclasses.replace(settings.http, host="127.0.0.1"),
        grpc=dataclasses.replace(settings.grpc, port=port),
    )
    c = bootstrap(tuned)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    runtime = create_app(c).state.proxy
    server = GrpcServer(c, runtime)
    try:
        run(server.start())
        yield c, port
    finally:
        run(server.stop())
        run(runtime.aclose())
        run(c.aclose_providers())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        c.close()


def test_rate_limit_and_provider_outage_in_process(tmp_path: Path) -> None:
    from domain.marketplace import ProviderUnavailableError

    settings = load_settings(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "JWT_SECRET": JWT_SECRET,
            "RATE_LIMIT_PER_MINUTE": "3",
            "SANDBOX_PROVISIONING_DELAY": "0",
            "GRPC_PORT": "9090",
        },
        env_file=None,
    )
    keys, _ = seed_users(settings)
    with in_process(settings) as (c, port):

        async def down(*_: Any, **__: Any) -> Any:
            raise ProviderUnavailableError("sandbox", "connection refused")

        c.marketplace.providers["sandbox"].rent = down  # type: ignore[method-assign]

        async def go() -> tuple[list[Status], Status, str]:
            async with Channel("127.0.0.1", port) as channel:
                alice = pb.GpuProxyServiceStub(channel, metadata={"x-api-key": keys["alice"]})
                seen = []
                for _ in range(4):
                    try:
                        await alice.get_credits(pb.GetCreditsRequest())
                        seen.append(Status.OK)
                    except GRPCError as exc:
                        seen.append(exc.status)
                bob = pb.GpuProxyServiceStub(channel, metadata={"x-api-key": keys["bob"]})
                try:
                    await bob.create_gpu_instance(
                        pb.CreateGpuInstanceRequest(
                            provider="sandbox", instance_id="sbx-a4000-1x-de"
                        )
                    )
                except GRPCError as exc:
                    return seen, exc.status, exc.message or ""
                return seen, Status.OK, ""

        seen, outage, message = asyncio.run(go())
    assert seen == [Status.OK] * 3 + [Status.RESOURCE_EXHAUSTED]
    assert outage == Status.UNAVAILABLE
    assert "connection refused" in message


# ---------------------------------------------------------------- PostgreSQL + TLS


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.postgres
def test_postgres_server_over_tls(pg_settings: Settings, tmp_path: Path, google: Any) -> None:
    pb2, pb2_grpc = google
    settings = dataclasses.replace(
        pg_settings, auth=dataclasses.replace(pg_settings.auth, jwt_secret=JWT_SECRET)
    )
    keys, emails = seed_users(settings)
    cert, key = _self_signed(tmp_path)
    port = free_port()
    env = server_env(settings, port, GRPC_TLS_CERT=str(cert), GRPC_TLS_KEY=str(key))
    with server_process(env, log_file=tmp_path / "server.log"):
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = pb2_grpc.GPUProxyServiceStub(channel)
            login = stub.Login(pb2.LoginRequest(email=emails["alice"], password=PASSWORD))
            meta = [("authorization", f"Bearer {login.token}")]
            credits = stub.GetCredits(pb2.GetCreditsRequest(), metadata=meta)
            assert credits.credits_remaining == 100.0
            meta = [("x-api-key", keys["alice"])]
            gpu = stub.CreateGPUInstance(
                pb2.CreateGPUInstanceRequest(provider="sandbox", instance_id="sbx-a4000-1x-de"),
                metadata=meta,
            )
            assert gpu.status == "running"

            def routed() -> Any:
                try:
                    return stub.ProxyRequest(
                        pb2.ProxyRequestMessage(
                            protocol="http", instance_id=gpu.instance_id, path="/echo", body=b"pg"
                        ),
                        metadata=meta,
                    )
                except grpc.RpcError:
                    return None

            answer = eventually(routed)
            assert answer is not None
            assert json.loads(answer.body)["body"] == "pg"
            gone = stub.DestroyGPUInstance(
                pb2.DestroyGPUInstanceRequest(instance_id=gpu.instance_id), metadata=meta
            )
            assert gone.success
            spent = Decimal(repr(gone.rental.billed))
            assert Decimal(0) <= spent < Decimal("0.01")
        with grpc.insecure_channel(f"localhost:{port}") as plain:
            code, _ = code_of(
                lambda: pb2_grpc.GPUProxyServiceStub(plain).HealthCheck(
                    pb2.HealthCheckRequest(), timeout=5
                )
            )
            assert code == grpc.StatusCode.UNAVAILABLE  # TLS only
