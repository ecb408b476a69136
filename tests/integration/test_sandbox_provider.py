"""The sandbox marketplace: catalog, lifecycle and real HTTP endpoints (OIP v2, echo, MCP)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from domain.marketplace import (
    InstanceNotFoundError,
    Offer,
    OfferQuery,
    OfferUnavailableError,
    ProviderInstance,
    RentRequest,
)
from infrastructure.providers.sandbox import SandboxProvider, catalog

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self, now: float = 1_764_150_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def provider() -> AsyncIterator[SandboxProvider]:
    sandbox = SandboxProvider(provisioning_delay=0)
    yield sandbox
    await sandbox.aclose()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield http


CHEAPEST = "sbx-a4000-1x-de"


def base_url(instance: ProviderInstance) -> str:
    assert instance.host is not None
    assert instance.port is not None
    return f"http://{instance.host}:{instance.port}"


async def running(provider: SandboxProvider, label: str = "inst-1") -> ProviderInstance:
    instance = await provider.rent(CHEAPEST, RentRequest(label=label))
    assert instance.status == "running"
    return instance


def port_refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


# ---------------------------------------------------------------------------- catalog


async def test_catalog_is_realistic_and_priced_in_integer_micro_usd(
    provider: SandboxProvider,
) -> None:
    offers = await provider.search(OfferQuery())
    assert 18 <= len(offers) <= 30
    assert len({o.offer_id for o in offers}) == len(offers)
    assert [o.price_per_hour for o in offers] == sorted(o.price_per_hour for o in offers)
    models = {o.gpu_model for o in offers}
    for expected in ("RTX 3090", "RTX 4090", "RTX A4000", "L40S", "H100 SXM 80GB"):
        assert expected in models
    assert any("A100" in m and "40GB" in m for m in models)
    assert any("A100" in m and "80GB" in m for m in models)
    assert any("H100 PCIe" in m for m in models)
    assert {o.num_gpus for o in offers} == {1, 2, 4, 8}
    for offer in offers:
        assert offer.provider == "sandbox"
        assert type(offer.price_per_hour) is int
        assert 50_000 <= offer.price_per_hour <= 40_000_000
        assert 0 < offer.reliability <= 1
        assert offer.vram_gb >= 16
        assert offer.location
    by_id = {o.offer_id: o for o in offers}
    assert by_id["sbx-4090-1x-us"].price_per_hour == 350_000  # $0.35/h exactly
    assert by_id["sbx-h100s-8x-is"].price_per_hour == 19_920_000
    # search hands out copies: mutating one does not leak into the next answer
    offers[0].metadata["tampered"] = True
    assert "tampered" not in (await provider.search(OfferQuery()))[0].metadata


@pytest.mark.parametrize(
    "query",
    [
        OfferQuery(min_vram_gb=48),
        OfferQuery(max_price_per_hour=500_000),
        OfferQuery(gpu_model="4090"),
        OfferQuery(gpu_model="a100"),
        OfferQuery(region="us"),
        OfferQuery(region="norway"),
        OfferQuery(num_gpus=8),
        OfferQuery(gpu_model="rtx", num_gpus=2, max_price_per_hour=1_000_000),
        OfferQuery(min_vram_gb=80, region="US", limit=2),
    ],
)
async def test_search_filters_match_the_catalog(
    provider: SandboxProvider, query: OfferQuery
) -> None:
    offers = await provider.search(query)
    expected = sorted(
        (o for o in catalog() if query.accepts(o)), key=lambda o: (o.price_per_hour, o.offer_id)
    )[: query.limit]
    assert [o.offer_id for o in offers] == [o.offer_id for o in expected]
    assert offers, "every filter above matches something in the catalog"
    assert all(query.accepts(o) for o in offers)


async def test_impossible_filters_give_nothing(provider: SandboxProvider) -> None:
    assert await provider.search(OfferQuery(min_vram_gb=500)) == []
    assert await provider.search(OfferQuery(gpu_model="Voodoo")) == []
    assert await provider.search(OfferQuery(max_price_per_hour=1)) == []


# ---------------------------------------------------------------------------- lifecycle


async def test_rent_is_provisioning_until_the_delay_has_passed() -> None:
    clock = FakeClock()
    sandbox = SandboxProvider(provisioning_delay=2, clock=clock)
    try:
        t0 = clock.now
        rented = await sandbox.rent("sbx-4090-1x-us", RentRequest(label="gi-42"))
        assert rented.provider == "sandbox"
        assert rented.status == "provisioning"
        assert rented.host is None
        assert rented.port is None
        assert rented.label == "gi-42"
        assert rented.price_per_hour == 350_000
        assert rented.started_at is None

        # The server already listens, but says it is not ready yet.
        endpoint = sandbox.endpoint(rented.instance_id)
        assert endpoint is not None
        async with httpx.AsyncClient() as http:
            url = f"http://{endpoint[0]}:{endpoint[1]}"
            assert (await http.get(f"{url}/v2/health/ready")).status_code == 503
            assert (await http.get(f"{url}/v2/health/live")).json() == {"live": True}

            clock.advance(1.999)
            assert (await sandbox.status(rented.instance_id)).status == "provisioning"

            clock.advance(0.001)
            now = await sandbox.status(rented.instance_id)
            assert now.status == "running"
            assert now.host == "127.0.0.1"
            assert now.port == endpoint[1]
            assert now.started_at == t0 + 2
            assert now.label == "gi-42"
            assert (await http.get(f"{url}/v2/health/ready")).json() == {"ready": True}

        listed = await sandbox.list_instances()
        assert [(i.instance_id, i.label, i.status) for i in listed] == [
            (rented.instance_id, "gi-42", "running")
        ]
    finally:
        await sandbox.aclose()


async def test_unknown_offer_and_instance(provider: SandboxProvider) -> None:
    with pytest.raises(OfferUnavailableError) as caught:
        await provider.rent("sbx-does-not-exist", RentRequest(label="x"))
    assert caught.value.status == 404
    with pytest.raises(InstanceNotFoundError):
        await provider.status("sbx-nope")
    await provider.destroy("sbx-nope")  # idempotent: unknown is not an error


async def test_destroy_closes_the_port_and_is_idempotent(
    provider: SandboxProvider, client: httpx.AsyncClient
) -> None:
    instance = await running(provider)
    other = await running(provider, label="inst-2")
    assert instance.port is not None
    assert (await client.get(f"{base_url(instance)}/health")).status_code == 200

    await provider.destroy(instance.instance_id)

    assert port_refuses(instance.port)
    with pytest.raises(httpx.ConnectError):
        await client.get(f"{base_url(instance)}/health")
    gone = await provider.status(instance.instance_id)
    assert gone.status == "terminated"
    assert gone.host is None
    assert [i.instance_id for i in await provider.list_instances()] == [other.instance_id]

    await provider.destroy(instance.instance_id)
    await asyncio.gather(*(provider.destroy(instance.instance_id) for _ in range(3)))
    assert (await client.get(f"{base_url(other)}/health")).status_code == 200


async def test_aclose_stops_everything_and_the_provider_can_be_used_again() -> None:
    sandbox = SandboxProvider(provisioning_delay=0)
    first = await running(sandbox)
    await sandbox.aclose()
    assert first.port is not None
    assert port_refuses(first.port)
    assert await sandbox.list_instances() == []
    again = await running(sandbox, label="again")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{base_url(again)}/health")).json()["label"] == "again"
    await sandbox.aclose()
    await sandbox.aclose()


async def test_sixteen_concurrent_rents_come_up_serve_and_shut_down(
    provider: SandboxProvider, client: httpx.AsyncClient
) -> None:
    offers = await provider.search(OfferQuery(num_gpus=1))
    labels = [f"res-1/{n}" for n in range(16)]
    instances = await asyncio.gather(
        *(
            provider.rent(offers[n % len(offers)].offer_id, RentRequest(label=label))
            for n, label in enumerate(labels)
        )
    )
    assert all(i.status == "running" for i in instances)
    ports = {i.port for i in instances}
    assert len(ports) == 16
    assert sorted(i.label or "" for i in await provider.list_instances()) == sorted(labels)

    async def infer(instance: ProviderInstance, x: float) -> tuple[str, list[float]]:
        response = await client.post(
            f"{base_url(instance)}/v2/models/demo/infer",
            json={"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [x]}]},
        )
        assert response.status_code == 200
        return response.headers["x-sandbox-instance-id"], response.json()["outputs"][0]["data"]

    answers = await asyncio.gather(*(infer(i, float(n)) for n, i in enumerate(instances)))
    assert answers == [(i.instance_id, [2.0 * n + 1]) for n, i in enumerate(instances)]

    await asyncio.gather(*(provider.destroy(i.instance_id) for i in instances))
    assert await provider.list_instances() == []
    assert all(port_refuses(port) for port in ports if port is not None)


# ---------------------------------------------------------------------------- endpoints


async def test_oip_v2_health_metadata_and_infer(
    provider: SandboxProvider, client: httpx.AsyncClient
) -> None:
    url = base_url(await running(provider))

    assert (await client.get(f"{url}/v2/health/live")).json() == {"live": True}
    assert (await client.get(f"{url}/v2/health/ready")).json() == {"ready": True}
    server = (await client.get(f"{url}/v2")).json()
    assert server["name"]
    assert "extensions" in server

    metadata = (await client.get(f"{url}/v2/models/demo")).json()
    assert metadata["name"] == "demo"
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1]}]
    assert (await client.get(f"{url}/v2/models/demo/versions/1")).json() == metadata
    assert (await client.get(f"{url}/v2/models/demo/ready")).json() == {
        "name": "demo",
        "ready": True,
    }

    request = {
        "id": "req-7",
        "inputs": [
            {
                "name": "input",
                "shape": [2, 3],
                "datatype": "FP32",
                "data": [[0, 1, 2.5], [-1, -0.5, 100]],
            }
        ],
    }
    response = await client.post(f"{url}/v2/models/demo/infer", json=request)
    assert response.status_code == 200
    assert response.json() == {
        "model_name": "demo",
        "model_version": "1",
        "id": "req-7",
        "outputs": [
            {
                "name": "output",
                "datatype": "FP32",
                "shape": [2, 3],
                "data": [1.0, 3.0, 6.0, -1.0, 0.0, 201.0],
            }
        ],
    }
    flat = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    versioned = await client.post(f"{url}/v2/models/demo/versions/1/infer", json=flat)
    assert versioned.json()["outputs"][0]["data"] == [3.0, 5.0, 7.0, 9.0]

    missing = await client.get(f"{url}/v2/models/resnet50")
    assert missing.status_code == 404
    assert "error" in missing.json()
    assert (await client.post(f"{url}/v2/models/resnet50/infer", json=flat)).status_code == 404


def _infer_body(**tensor: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "input", "shape": [2], "datatype": "FP32", "data": [1, 2]}
    base.update(tensor)
    return {"inputs": [base]}


BAD_INFER_BODIES: list[Any] = [
    _infer_body(datatype="INT64"),
    _infer_body(shape=[3]),
    _infer_body(shape=[2, 2]),
    _infer_body(shape="2"),
    _infer_body(shape=[-2]),
    _infer_body(data=[1, "two"]),
    _infer_body(data=[True, False]),
    _infer_body(data=None, shape=[1]),
    _infer_body(name=""),
    {"inputs": []},
    {"inputs": [_infer_body()["inputs"][0], _infer_body()["inputs"][0]]},
    {"nothing": 1},
    [1, 2, 3],
    {**_infer_body(), "outputs": [{"name": "logits"}]},
    {"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": [1e308]}]},
]


async def test_bad_infer_input_is_a_400_with_an_oip_error(
    provider: SandboxProvider, client: httpx.AsyncClient
) -> None:
    url = base_url(await running(provider))
    for body in BAD_INFER_BODIES:
        response = await client.post(f"{url}/v2/models/demo/infer", json=body)
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert isinstance(error, str), body
        assert error, body


async def test_infer_body_that_is_not_json_is_a_400(
    provider: SandboxProvider, client: httpx.AsyncClient
) -> None:
    url = base_url(await running(provider))
    for content in (b"{not json", b'{"inputs": NaN}', b"\xff\xfe"):
        response = await client.post(f"{url}/v2/models/demo/infer", content=content)
        assert response.status_code == 400
        assert "error" in response.json()
    assert (await client.get(f"{url}/v2/models/demo/infer")).status_code == 405


async def test_echo_health_and_stream(provider: SandboxProvider, client: httpx.AsyncClient) -> None:
    instance = await running(provider, label="echo-me")
    url = base_url(instance)

    health = await client.get(f"{url}/health")
    assert health.json() == {
        "status": "ok",
        "instance_id": instance.instance_id,
        "label": "echo-me",
    }
    assert health.headers["x-sandbox-instance-id"] == instance.instance_id

    echoed = await client.post(
        f"{url}/echo?a=1", json={"hello": "world"}, headers={"X-Custom": "yes"}
    )
    assert echoed.status_code == 200
    got = echoed.json()
    assert got["method"] == "POST"
    assert got["path"] == "/echo"
    assert got["query"] == "a=1"
    assert got["headers"]["x-custom"] == "yes"
    assert got["headers"]["content-type"] == "application/json"
    assert got["json"] == {"hello": "world"}
    assert got["body"] == '{"hello":"world"}'

    binary = (await client.post(f"{url}/echo", content=b"\x00\xff")).json()
    assert binary["body"] is None
    assert binary["body_base64"] == "AP8="

    assert (await client.post(f"{url}/echo?status=503", content=b"x")).status_code == 503
    slow = await client.post(f"{url}/echo?delay_ms=50", content=b"x")
    assert slow.elapsed.total_seconds() >= 0.05
    assert (await client.post(f"{url}/echo?delay_ms=soon")).status_code == 400

    async with client.stream("GET", f"{url}/stream?chunks=3") as stream:
        lines = [line async for line in stream.aiter_lines()]
    assert lines == [f"chunk {n} from {instance.instance_id}" for n in range(3)]

    assert (await client.get(f"{url}/nowhere")).status_code == 404


async def test_mcp_json_rpc_tools(provider: SandboxProvider, client: httpx.AsyncClient) -> None:
    url = f"{base_url(await running(provider))}/mcp"

    async def rpc(payload: Any) -> httpx.Response:
        return await client.post(url, json=payload)

    init = (await rpc({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})).json()
    assert init["result"]["capabilities"]["tools"] is not None
    assert init["result"]["protocolVersion"]
    notified = await rpc({"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert notified.status_code == 202

    tools = (await rpc({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).json()
    assert tools["id"] == 2
    assert [t["name"] for t in tools["result"]["tools"]] == ["echo"]
    assert tools["result"]["tools"][0]["inputSchema"]["required"] == ["text"]

    called = await rpc(
        {
            "jsonrpc": "2.0",
            "id": "c-1",
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "héllo"}},
        }
    )
    assert called.status_code == 200
    assert called.json() == {
        "jsonrpc": "2.0",
        "id": "c-1",
        "result": {"content": [{"type": "text", "text": "héllo"}], "isError": False},
    }

    unknown_tool = await rpc(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "rm"}}
    )
    assert unknown_tool.json()["error"]["code"] == -32602
    unknown_method = await rpc({"jsonrpc": "2.0", "id": 4, "method": "resources/list"})
    assert unknown_method.json()["error"]["code"] == -32601
    batch = await rpc(
        [
            {"jsonrpc": "2.0", "id": 5, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
        ]
    )
    assert batch.json() == [{"jsonrpc": "2.0", "id": 5, "result": {}}]

    parse_error = await client.post(url, content=b"{oops")
    assert parse_error.status_code == 400
    assert parse_error.json()["error"]["code"] == -32700
    invalid = await rpc({"id": 6, "method": "tools/list"})  # no "jsonrpc": "2.0"
    assert invalid.json()["error"]["code"] == -32600


# ---------------------------------------------------------------------------- failures


async def test_fail_on_the_nth_rent_raises_offer_unavailable() -> None:
    sandbox = SandboxProvider(provisioning_delay=0, fail_on={2})
    try:
        first = await sandbox.rent(CHEAPEST, RentRequest(label="a"))
        with pytest.raises(OfferUnavailableError) as caught:
            await sandbox.rent(CHEAPEST, RentRequest(label="b"))
        assert not caught.value.retryable
        third = await sandbox.rent(CHEAPEST, RentRequest(label="c"))
        assert {i.label for i in await sandbox.list_instances()} == {"a", "c"}
        assert first.status == third.status == "running"
    finally:
        await sandbox.aclose()


async def test_injected_failed_and_stuck_instances() -> None:
    clock = FakeClock()
    sandbox = SandboxProvider(
        provisioning_delay=5,
        clock=clock,
        fail_on={"sbx-3090-1x-us": "failed", "sbx-4090-1x-us": "stuck"},
    )
    try:
        failing = await sandbox.rent("sbx-3090-1x-us", RentRequest(label="f"))
        stuck = await sandbox.rent("sbx-4090-1x-us", RentRequest(label="s"))
        fine = await sandbox.rent(CHEAPEST, RentRequest(label="ok"))
        assert failing.status == stuck.status == fine.status == "provisioning"
        assert sandbox.endpoint(failing.instance_id) is None

        clock.advance(5)
        assert (await sandbox.status(failing.instance_id)).status == "failed"
        assert (await sandbox.status(fine.instance_id)).status == "running"
        clock.advance(3600)
        still = await sandbox.status(stuck.instance_id)
        assert still.status == "provisioning"
        assert still.host is None

        statuses = {i.label: i.status for i in await sandbox.list_instances()}
        assert statuses == {"f": "failed", "s": "provisioning", "ok": "running"}
        await sandbox.destroy(failing.instance_id)
        await sandbox.destroy(stuck.instance_id)
        assert [i.label for i in await sandbox.list_instances()] == ["ok"]
    finally:
        await sandbox.aclose()


async def test_fail_rate_is_random_but_reproducible_with_a_seed() -> None:
    async def outcomes(seed: int) -> list[bool]:
        sandbox = SandboxProvider(provisioning_delay=0, fail_rate=0.5, seed=seed)
        results: list[bool] = []
        try:
            for n in range(12):
                try:
                    await sandbox.rent(CHEAPEST, RentRequest(label=f"r{n}"))
                    results.append(True)
                except OfferUnavailableError:
                    results.append(False)
        finally:
            await sandbox.aclose()
        return results

    first = await outcomes(7)
    assert first == await outcomes(7)
    assert True in first
    assert False in first

    always = SandboxProvider(provisioning_delay=0, fail_rate=1.0)
    with pytest.raises(OfferUnavailableError):
        await always.rent(CHEAPEST, RentRequest(label="never"))
    assert await always.list_instances() == []
    await always.aclose()


def test_invalid_failure_options_are_refused() -> None:
    with pytest.raises(ValueError, match="fail_rate"):
        SandboxProvider(fail_rate=1.5)
    with pytest.raises(ValueError, match="failure_mode"):
        SandboxProvider(failure_mode="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="provisioning_delay"):
        SandboxProvider(provisioning_delay=-1)


def test_offer_type_is_the_domain_offer() -> None:
    assert all(isinstance(o, Offer) for o in catalog())
