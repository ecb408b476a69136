"""The real vast.ai adapter against the fake vast.ai API (in-process and on a loopback port).

Where the fact sheet leaves a gap, the fake decides it (see ``tests/fake_servers/vastai.py``):
insufficient credit on create is ``400 {"error": "insufficient_credit"}``; a create that fails
but still made an instance answers 400 with ``new_contract``.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import httpx
import pytest

from domain.marketplace import (
    InstanceNotFoundError,
    InsufficientProviderCreditError,
    InvalidProviderRequestError,
    OfferQuery,
    OfferUnavailableError,
    ProviderAuthError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    RentRequest,
)
from infrastructure.providers.vastai import VastAiProvider, usd_to_micro
from tests.fake_servers.vastai import (
    DEFAULT_API_KEY,
    FakeVastAi,
    Injection,
    ManualClock,
    make_offer,
    running_fake_vastai,
)

pytestmark = pytest.mark.anyio

KEY = DEFAULT_API_KEY
BASE = "http://vast.test"
RTX4090_US = 18_723_001


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Sleeps:
    """The injected sleep: records the backoff delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def vast_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(vast_clock: ManualClock) -> FakeVastAi:
    return FakeVastAi(clock=vast_clock)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_provider(fake: FakeVastAi, sleeps: Sleeps, **kwargs: Any) -> VastAiProvider:
    options: dict[str, Any] = {"sleep": sleeps, "jitter": lambda: 1.0}
    options.update(kwargs)
    return VastAiProvider(
        options.pop("api_key", KEY),
        base_url=options.pop("base_url", BASE),
        transport=httpx.ASGITransport(app=fake),
        **options,
    )


@pytest.fixture
async def provider(fake: FakeVastAi, sleeps: Sleeps) -> AsyncIterator[VastAiProvider]:
    p = make_provider(fake, sleeps)
    yield p
    await p.aclose()


async def fake_get(fake: FakeVastAi, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url=BASE) as c:
        return await c.get(path, **kwargs)


async def fake_request(fake: FakeVastAi, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake), base_url=BASE) as c:
        return await c.request(method, path, **kwargs)


def micro(usd: float) -> int:
    """The reference conversion, written out independently of the adapter."""
    return int((Decimal(str(usd)) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# ============================================================================ search


async def test_search_sends_the_documented_request(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    offers = await provider.search(OfferQuery())

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/api/v0/bundles/")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert "api_key" not in request.query
    assert request.json() == {
        "rentable": {"eq": True},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "limit": 64,
        "allocated_storage": 20.0,
    }
    ids = [int(o.offer_id) for o in offers]
    assert 18_723_011 not in ids  # not rentable
    assert len(ids) == 10
    prices = [o.price_per_hour for o in offers]
    assert prices == sorted(prices)
    assert {o.provider for o in offers} == {"vast.ai"}


async def test_search_translates_every_filter(fake: FakeVastAi, provider: VastAiProvider) -> None:
    query = OfferQuery(
        min_vram_gb=24,
        max_price_per_hour=600_000,
        gpu_model="4090",
        region="us",
        num_gpus=1,
        limit=20,
    )
    offers = await provider.search(query)

    body = fake.requests[0].json()
    assert body["gpu_ram"] == {"gte": 24000}  # MB, the CLI's GB x 1000
    assert body["dph_total"] == {"lte": 0.6}  # USD/hour for the whole offer
    assert body["gpu_name"] == {"in": ["RTX 4090"]}
    assert body["geolocation"] == {"in": ["US"]}
    assert body["num_gpus"] == {"eq": 1}
    assert body["limit"] == 20
    assert [o.offer_id for o in offers] == [str(RTX4090_US)]
    assert all(query.accepts(o) for o in offers)


async def test_search_sends_every_known_name_containing_the_model(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    offers = await provider.search(OfferQuery(gpu_model="h100"))

    assert fake.requests[0].json()["gpu_name"] == {"in": ["H100 PCIE", "H100 SXM", "H100 NVL"]}
    assert {o.offer_id for o in offers} == {"18723005", "18723006"}


async def test_search_filters_the_api_cannot_express_are_local(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    offers = await provider.search(OfferQuery(region="oslo", gpu_model="Quadro XYZ 9"))
    body = fake.requests[0].json()
    assert "geolocation" not in body  # not a country code: checked locally only
    assert body["gpu_name"] == {"eq": "Quadro XYZ 9"}
    assert offers == []

    offers = await provider.search(OfferQuery(region="oslo"))
    assert [o.location for o in offers] == ["Oslo, NO"]


async def test_search_units_are_normalised(fake: FakeVastAi, provider: VastAiProvider) -> None:
    [a100] = await provider.search(OfferQuery(gpu_model="A100"))

    assert a100.gpu_model == "A100 SXM4"
    assert a100.num_gpus == 1
    assert a100.vram_gb == 81.92  # 81920 MB per GPU
    assert a100.location == "Washington, US"
    assert a100.reliability == 0.998
    # dph_total as vast priced it for allocated_storage=20: 1.13 + 20 * 0.28 / 720
    assert a100.price_per_hour == micro(1.13 + 20 * 0.28 / 720) == 1_137_778
    assert a100.metadata["gpu_ram"] == 81920
    assert a100.metadata["allocated_storage_gb"] == 20.0

    [h100x8] = await provider.search(OfferQuery(gpu_model="H100", num_gpus=8))
    assert h100x8.vram_gb == 81.559  # per GPU, not the total
    assert h100x8.num_gpus == 8


@pytest.mark.parametrize(
    ("dph_total", "expected"),
    [
        (2.01, 2_010_000),  # float maths gives 2009999.9999999998
        (0.3578, 357_800),
        (1.0020741, 1_002_074),  # the docs' own example, half-up to the micro-dollar
        (0.0000005, 1),
        (17.6, 17_600_000),
        (0.57, 570_000),
    ],
)
async def test_prices_convert_to_micro_usd_exactly(
    fake: FakeVastAi, sleeps: Sleeps, dph_total: float, expected: int
) -> None:
    fake.offers.clear()
    fake.add_offer(make_offer(7, "RTX 4090", dph_base=dph_total, dph_total=dph_total))
    async with make_provider(fake, sleeps, search_storage_gb=None) as provider:
        [offer] = await provider.search(OfferQuery())

    assert "allocated_storage" not in fake.requests[0].json()
    assert offer.price_per_hour == expected
    assert usd_to_micro(dph_total) == expected
    if dph_total == 2.01:
        assert int(dph_total * 1_000_000) != expected  # why Decimal(str(x)) is needed


async def test_search_rechecks_every_filter_locally(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    fake.ignore_filters = {"gpu_ram", "dph_total", "gpu_name", "geolocation", "num_gpus"}
    query = OfferQuery(min_vram_gb=40, max_price_per_hour=2_000_000, region="US", num_gpus=1)
    raw = await fake_request(fake, "POST", "/api/v0/bundles/", json=provider.search_body(query))
    assert len(raw.json()["offers"]) > 1  # the server ignored the filters

    offers = await provider.search(query)

    assert [o.offer_id for o in offers] == ["18723004"]


async def test_search_skips_malformed_rows_and_honours_limit(
    fake: FakeVastAi, sleeps: Sleeps
) -> None:
    broken = make_offer(1, "RTX 4090", dph_base=0.01)
    broken["gpu_ram"] = None
    fake.add_offer(broken)
    async with make_provider(fake, sleeps, search_storage_gb=None) as provider:
        offers = await provider.search(OfferQuery(limit=3))

    assert fake.requests[0].json()["limit"] == 3
    # the server sent the 3 cheapest, the broken one among them: it is dropped, not fatal
    assert [o.offer_id for o in offers] == ["18723009", "18723003"]


async def test_search_extra_filters_are_sent(fake: FakeVastAi, sleeps: Sleeps) -> None:
    floors = {"verified": {"eq": True}, "reliability": {"gte": 0.99}}
    async with make_provider(fake, sleeps, extra_filters=floors) as provider:
        offers = await provider.search(OfferQuery(gpu_model="4090"))

    body = fake.requests[0].json()
    assert body["verified"] == {"eq": True}
    assert body["reliability"] == {"gte": 0.99}
    assert "18723010" not in [o.offer_id for o in offers]  # unverified


# ============================================================================ the fake's search


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ({"gpu_name": {"eq": "RTX 3090"}}, {18_723_003, 18_723_011}),
        ({"gpu_name": {"neq": "RTX 4090"}, "num_gpus": {"gt": 1}}, {18_723_005, 18_723_008}),
        ({"gpu_ram": {"gte": 81559}}, {18_723_004, 18_723_005, 18_723_006}),
        ({"gpu_ram": {"lt": 20000}}, {18_723_009}),
        ({"num_gpus": {"gte": 2, "lte": 4}}, {18_723_002, 18_723_008}),
        ({"gpu_name": {"in": ["L40S", "Tesla V100"]}}, {18_723_008, 18_723_009}),
        ({"geolocation": {"in": ["NO", "se"]}}, {18_723_002, 18_723_007}),
        ({"geolocation": {"eq": "FR"}}, {18_723_008}),
        (
            {
                "geolocation": {"notin": ["US", "CA", "NO", "DE", "SE", "FR"]},
                "rentable": {"eq": True},
            },
            {18_723_010},
        ),
        ({"verified": {"eq": False}}, {18_723_010}),
        ({"num_gpus": {"notin": [1]}, "dph_base": {"lt": 1}}, {18_723_002}),
        ({"no_such_field": {"eq": 1}}, set()),
    ],
)
async def test_fake_search_operators(
    fake: FakeVastAi, q: dict[str, Any], expected: set[int]
) -> None:
    answer = await fake_request(fake, "POST", "/api/v0/bundles/", json=q)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert {row["id"] for row in answer.json()["offers"]} == expected


async def test_fake_search_order_limit_type_storage_and_get_form(fake: FakeVastAi) -> None:
    q = {"order": [["dph_base", "desc"]], "limit": 3, "type": "ondemand"}
    answer = await fake_request(fake, "POST", "/api/v0/bundles/", json=q)
    assert [r["dph_base"] for r in answer.json()["offers"]] == [17.6, 3.2, 2.01]

    answer = await fake_get(fake, "/api/v0/bundles", params={"q": '{"limit": 2}'})
    assert len(answer.json()["offers"]) == 2

    q = {"id": {"eq": RTX4090_US}, "allocated_storage": 72}
    [row] = (await fake_request(fake, "POST", "/api/v0/bundles/", json=q)).json()["offers"]
    assert row["dph_total"] == 0.35 + 72 * 0.28 / 720
    assert row["search"]["totalHour"] == row["dph_total"]

    q = {"id": {"eq": RTX4090_US}, "type": "bid", "allocated_storage": 0}
    [row] = (await fake_request(fake, "POST", "/api/v0/bundles/", json=q)).json()["offers"]
    assert row["dph_total"] == row["min_bid"] == 0.21

    for bad in ({"gpu_ram": {"about": 1}}, {"type": "cheap"}, {"limit": 0}, {"gpu_ram": 5}):
        answer = await fake_request(fake, "POST", "/api/v0/bundles/", json=bad)
        assert answer.status_code == 400
        assert answer.json()["error"] == "invalid_request"


async def test_fake_rate_limit_is_plain_text_without_retry_after(fake: FakeVastAi) -> None:
    fake.rate_limit(path="/api/v0/instances/")
    answer = await fake_get(
        fake, "/api/v0/instances/1/", headers={"Authorization": f"Bearer {KEY}"}
    )

    assert answer.status_code == 429
    assert answer.headers["content-type"] == "text/plain"
    assert "retry-after" not in answer.headers
    assert answer.text == "API requests too frequent: endpoint threshold=2.0"


async def test_fake_v0_instance_list_is_retired_and_query_key_works(fake: FakeVastAi) -> None:
    answer = await fake_get(fake, "/api/v0/instances/", params={"api_key": KEY, "owner": "me"})
    assert answer.status_code == 410
    assert answer.json()["error"] == "deprecated_endpoint"

    answer = await fake_get(fake, "/api/v0/users/current/", params={"api_key": KEY})
    assert answer.json()["balance"] == 250.0


async def test_fake_v1_list_rejects_bad_tokens_and_computed_filters(fake: FakeVastAi) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    answer = await fake_get(fake, "/api/v1/instances/", params={"after_token": "%%%"}, headers=auth)
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_token")

    params = {"select_filters": '{"dph_total": {"lte": 1}}'}
    answer = await fake_get(fake, "/api/v1/instances/", params=params, headers=auth)
    assert answer.status_code == 400


async def test_fake_v1_list_orders_filters_and_pages(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    for n in range(30):
        fake.add_offer(make_offer(2000 + n, "RTX 3060", gpu_ram=12288, dph_base=0.05))
        await provider.rent(str(2000 + n), RentRequest(label="even" if n % 2 == 0 else "odd"))
    auth = {"Authorization": f"Bearer {KEY}"}
    relabel = await fake_request(
        fake, "PUT", f"/api/v0/instances/{min(fake.instances)}/", json={"label": "x"}, headers=auth
    )
    assert relabel.json() == {"success": True}

    seen: list[int] = []
    params = {"order_by": '[{"col":"id","dir":"desc"}]', "limit": "4"}
    params["select_filters"] = '{"label": {"eq": "even"}}'
    while True:
        page = (await fake_get(fake, "/api/v1/instances/", params=params, headers=auth)).json()
        assert page["total_instances"] == 30
        assert page["label_counts"] == {"even": 14, "odd": 15, "x": 1}
        seen += [row["id"] for row in page["instances"]]
        if page["next_token"] is None:
            break
        params["after_token"] = page["next_token"]
    assert len(seen) == 14
    assert seen == sorted(seen, reverse=True)


# ===================================================================== rent / status / destroy


async def test_rent_sends_the_documented_request(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    request = RentRequest(
        label="gi-42",
        image="pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
        env={"HF_TOKEN": "x"},
        ports=(8000, 9000),
        disk_gb=30,
        onstart="echo ready",
    )
    instance = await provider.rent(str(RTX4090_US), request)

    [sent] = fake.requests
    assert (sent.method, sent.path) == ("PUT", f"/api/v0/asks/{RTX4090_US}/")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.json() == {
        "client_id": "me",
        "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
        "disk": 30,
        "label": "gi-42",
        "runtype": "ssh_direct",
        "env": {"HF_TOKEN": "x", "-p 8000:8000": "1", "-p 9000:9000": "1"},
        "onstart": "echo ready",
        "cancel_unavail": True,
    }
    [made] = fake.instances
    assert instance.provider == "vast.ai"
    assert instance.instance_id == str(made)
    assert instance.status == "provisioning"
    assert instance.label == "gi-42"


async def test_rent_without_onstart_runs_the_image_entrypoint(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    await provider.rent(str(RTX4090_US), RentRequest(label="gi-1", ports=()))

    body = fake.requests[0].json()
    assert body["runtype"] == "args"
    assert "onstart" not in body
    assert body["env"] == {}


async def test_instance_goes_from_null_to_loading_to_running(
    fake: FakeVastAi, provider: VastAiProvider, vast_clock: ManualClock
) -> None:
    fake.add_offer(make_offer(42, "RTX 4090", dph_base=2.01, storage_cost=0.0))
    rented = await provider.rent("42", RentRequest(label="gi-7", ports=(8000,), disk_gb=30))
    started = vast_clock.now

    first = await provider.status(rented.instance_id)
    assert (first.status, first.raw_status, first.port) == ("provisioning", "", None)

    vast_clock.advance(2)
    loading = await provider.status(rented.instance_id)
    assert (loading.status, loading.raw_status, loading.port) == ("provisioning", "loading", None)

    vast_clock.advance(3)
    running = await provider.status(rented.instance_id)
    view = fake._view(fake.instances[int(rented.instance_id)])
    assert running.status == "running"
    assert running.raw_status == "running"
    assert running.host == "198.51.100.43"
    assert running.port == int(view["ports"]["8000/tcp"][0]["HostPort"])
    assert running.port != int(view["ports"]["22/tcp"][0]["HostPort"])
    assert running.price_per_hour == 2_010_000
    assert running.started_at == started
    assert running.label == "gi-7"

    status_requests = fake.requests_to("GET", "/api/v0/instances/")
    assert {r.path for r in status_requests} == {f"/api/v0/instances/{rented.instance_id}/"}
    assert all(r.param("owner") == "me" for r in status_requests)


@pytest.mark.parametrize(
    ("setup", "state", "raw"),
    [
        ("never_running", "provisioning", "loading"),
        ("exited", "failed", "exited"),
        ("offline", "failed", "offline"),
        ("created", "failed", "created"),  # OCI runtime create failed
        ("stopped", "stopping", "stopped"),
    ],
)
async def test_instance_states_map_to_ours(
    fake: FakeVastAi,
    provider: VastAiProvider,
    vast_clock: ManualClock,
    setup: str,
    state: str,
    raw: str,
) -> None:
    if setup == "never_running":
        fake.never_running = True
    elif setup != "stopped":
        fake.end_status = setup
    rented = await provider.rent(str(RTX4090_US), RentRequest(label="gi-s"))
    if setup == "stopped":
        answer = await fake_request(
            fake,
            "PUT",
            f"/api/v0/instances/{rented.instance_id}/",
            json={"state": "stopped"},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert answer.json() == {"success": True}
    vast_clock.advance(3600)

    seen = await provider.status(rented.instance_id)

    assert (seen.status, seen.raw_status) == (state, raw)
    assert seen.port is None


@pytest.mark.parametrize("gone_status", [404, 410])
async def test_second_rent_of_an_offer_is_no_such_ask(
    vast_clock: ManualClock, sleeps: Sleeps, gone_status: int
) -> None:
    fake = FakeVastAi(clock=vast_clock, gone_status=gone_status)
    async with make_provider(fake, sleeps) as provider:
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-a"))
        with pytest.raises(OfferUnavailableError) as caught:
            await provider.rent(str(RTX4090_US), RentRequest(label="gi-b"))

    assert caught.value.status == gone_status
    assert "no_such_ask" in str(caught.value)
    assert not caught.value.retryable
    assert len(fake.instances) == 1
    assert sleeps.delays == []  # not retried


async def test_unknown_and_unrentable_offers_are_unavailable(provider: VastAiProvider) -> None:
    for offer_id in ("999", "18723011"):
        with pytest.raises(OfferUnavailableError):
            await provider.rent(offer_id, RentRequest(label="gi-x"))


async def test_malformed_ids_are_refused_before_any_request(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    with pytest.raises(InvalidProviderRequestError):
        await provider.rent("../users/current", RentRequest(label="gi-x"))
    with pytest.raises(InvalidProviderRequestError):
        await provider.status("abc")
    with pytest.raises(InvalidProviderRequestError):
        await provider.destroy("1/../2")
    assert fake.requests == []


@pytest.mark.parametrize("missing_instance_status", [200, 404])
async def test_destroy_then_status_is_not_found_and_destroy_is_idempotent(
    vast_clock: ManualClock, sleeps: Sleeps, missing_instance_status: int
) -> None:
    fake = FakeVastAi(clock=vast_clock, missing_instance_status=missing_instance_status)
    async with make_provider(fake, sleeps) as provider:
        rented = await provider.rent(str(RTX4090_US), RentRequest(label="gi-d"))
        await provider.destroy(rented.instance_id)
        with pytest.raises(InstanceNotFoundError):
            await provider.status(rented.instance_id)
        await provider.destroy(rented.instance_id)  # already gone: fine
        await provider.destroy("123456")  # never existed: fine

    deletes = fake.requests_to("DELETE", "/api/v0/instances/")
    assert [d.path for d in deletes[:2]] == [f"/api/v0/instances/{rented.instance_id}/"] * 2
    assert all(d.json() == {} for d in deletes)
    assert int(rented.instance_id) in fake.destroyed
    assert fake.instances == {}


async def test_list_instances_follows_next_token(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    for n in range(60):
        fake.add_offer(make_offer(1000 + n, "RTX 3060", gpu_ram=12288, dph_base=0.05))
    rented = [await provider.rent(str(1000 + n), RentRequest(label=f"gi-{n}")) for n in range(60)]
    fake.requests.clear()

    listed = await provider.list_instances()

    assert [i.instance_id for i in listed] == [r.instance_id for r in rented]
    assert [i.label for i in listed] == [f"gi-{n}" for n in range(60)]
    pages = fake.requests_to("GET", "/api/v1/instances/")
    assert len(pages) == 3  # 25 + 25 + 10
    assert [p.param("limit") for p in pages] == ["25"] * 3
    assert pages[0].param("after_token") is None
    tokens = [p.param("after_token") for p in pages[1:]]
    assert all(tokens)
    assert tokens[0] != tokens[1]


async def test_list_instances_of_an_empty_account(provider: VastAiProvider) -> None:
    assert await provider.list_instances() == []


# ============================================================================ create failures


async def test_insufficient_credit_on_rent(fake: FakeVastAi, provider: VastAiProvider) -> None:
    fake.fail_create(1, "insufficient_credit")
    with pytest.raises(InsufficientProviderCreditError) as caught:
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-c"))
    assert caught.value.status == 400
    assert fake.instances == {}

    fake.insufficient_credit = True
    with pytest.raises(InsufficientProviderCreditError):
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-c"))


async def test_failed_create_that_still_made_an_instance_destroys_it(
    fake: FakeVastAi, provider: VastAiProvider
) -> None:
    fake.fail_create(1, "error_with_contract")

    with pytest.raises(OfferUnavailableError) as caught:
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-e"))

    [orphan] = fake.destroyed
    assert str(orphan) in str(caught.value)
    assert fake.instances == {}
    assert [r.path for r in fake.requests_to("DELETE", "/")] == [f"/api/v0/instances/{orphan}/"]


async def test_only_the_nth_create_fails(fake: FakeVastAi, provider: VastAiProvider) -> None:
    fake.fail_create(2)
    await provider.rent("18723001", RentRequest(label="gi-1"))
    with pytest.raises(OfferUnavailableError):
        await provider.rent("18723002", RentRequest(label="gi-2"))
    await provider.rent("18723003", RentRequest(label="gi-3"))
    assert len(fake.instances) == 2


async def test_rent_whose_answer_was_lost_is_found_by_its_label(
    fake: FakeVastAi, provider: VastAiProvider, sleeps: Sleeps
) -> None:
    fake.fail_create(1, "lost_response")  # rented, but the answer is a 504

    instance = await provider.rent(str(RTX4090_US), RentRequest(label="gi-lost"))

    [made] = fake.instances
    assert instance.instance_id == str(made)
    assert instance.label == "gi-lost"
    assert len(fake.requests_to("PUT", "/api/v0/asks/")) == 2  # the retry met no_such_ask
    assert len(fake.requests_to("GET", "/api/v1/instances/")) == 1
    assert len(sleeps.delays) == 1


async def test_rent_refusals_are_classified(fake: FakeVastAi, provider: VastAiProvider) -> None:
    with pytest.raises(InvalidProviderRequestError) as invalid:
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-i", disk_gb=4))  # min 8 GB
    assert invalid.value.status == 400
    assert "invalid_args" in str(invalid.value)

    own = json.dumps(
        {
            "success": False,
            "error": "invalid_args",
            "msg": "error 403/3586: Offer 1 is not your own.",
        }
    ).encode()
    fake.inject(Injection(403, body=own, method="PUT"))
    with pytest.raises(OfferUnavailableError) as not_yours:  # a 403 that is not about the key
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-o"))
    assert not_yours.value.status == 403
    assert fake.instances == {}


async def test_rent_500_is_not_retried(fake: FakeVastAi, provider: VastAiProvider) -> None:
    fake.fail_create(1, "server_error")
    with pytest.raises(ProviderUnavailableError) as caught:
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-500"))
    assert caught.value.status == 500
    assert len(fake.requests_to("PUT", "/api/v0/asks/")) == 1


# ============================================================================ auth, limits, outages


@pytest.mark.parametrize("auth_error_status", [401, 404])
async def test_a_wrong_key_is_an_auth_error_and_never_retried(
    vast_clock: ManualClock, sleeps: Sleeps, auth_error_status: int
) -> None:
    fake = FakeVastAi(clock=vast_clock, auth_error_status=auth_error_status)
    async with make_provider(fake, sleeps, api_key="wrong-key") as provider:
        calls = [
            provider.rent(str(RTX4090_US), RentRequest(label="gi-k")),
            provider.status("31415900"),
            provider.list_instances(),
            provider.destroy("31415900"),
            provider.search(OfferQuery()),  # search: 404 "Invalid user key" for a wrong key
        ]
        for call in calls:
            with pytest.raises(ProviderAuthError) as caught:
                await call
            assert not caught.value.retryable
            assert "wrong-key" not in str(caught.value)

    assert len(fake.requests) == len(calls)
    assert sleeps.delays == []


async def test_a_missing_key_and_a_403_are_auth_errors(fake: FakeVastAi, sleeps: Sleeps) -> None:
    async with make_provider(fake, sleeps, api_key="") as provider:
        assert await provider.search(OfferQuery(limit=1))  # search works anonymously
        assert "authorization" not in fake.requests[0].headers
        with pytest.raises(ProviderAuthError):
            await provider.list_instances()

    body = b'{"success": false, "error": "forbidden", "msg": "key lacks instance_read"}'
    fake.inject(Injection(403, body=body, path="/api/v0/instances/"))
    async with make_provider(fake, sleeps) as provider:
        with pytest.raises(ProviderAuthError) as caught:
            await provider.status("31415900")
    assert caught.value.status == 403
    assert sleeps.delays == []


async def test_429_is_retried_with_backoff_then_succeeds(
    fake: FakeVastAi, provider: VastAiProvider, sleeps: Sleeps
) -> None:
    fake.rate_limit(count=2, path="/api/v0/bundles/")

    offers = await provider.search(OfferQuery(gpu_model="4090"))

    assert offers
    assert len(fake.requests_to("POST", "/api/v0/bundles/")) == 3
    assert sleeps.delays == [0.5, 1.0]  # exponential (jitter pinned to its top)


async def test_persistent_429_gives_rate_limited_after_bounded_attempts(
    fake: FakeVastAi, provider: VastAiProvider, sleeps: Sleeps
) -> None:
    fake.rate_limit(count=None)

    with pytest.raises(ProviderRateLimitedError) as caught:
        await provider.rent(str(RTX4090_US), RentRequest(label="gi-r"))

    assert caught.value.retryable
    assert caught.value.status == 429
    assert "threshold=4.5" in str(caught.value)
    assert len(fake.requests) == 4
    assert sleeps.delays == [0.5, 1.0, 2.0]
    assert fake.instances == {}


async def test_backoff_is_capped_and_jittered(fake: FakeVastAi, sleeps: Sleeps) -> None:
    fake.rate_limit(count=None)
    async with make_provider(
        fake, sleeps, max_attempts=5, backoff_max_s=1.5, jitter=lambda: 0.0
    ) as provider:
        with pytest.raises(ProviderRateLimitedError):
            await provider.list_instances()
    assert sleeps.delays == [0.25, 0.5, 0.75, 0.75]  # min(cap, 0.5 * 2^n) x (0.5 + 0.5 * 0)


async def test_503_burst_is_retried(
    fake: FakeVastAi, provider: VastAiProvider, sleeps: Sleeps
) -> None:
    rented = await provider.rent(str(RTX4090_US), RentRequest(label="gi-b"))
    fake.server_errors(count=3, status=503)

    listed = await provider.list_instances()

    assert [i.instance_id for i in listed] == [rented.instance_id]
    assert len(sleeps.delays) == 3


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_persistent_5xx_gives_unavailable(
    fake: FakeVastAi, provider: VastAiProvider, sleeps: Sleeps, status: int
) -> None:
    fake.server_errors(count=None, status=status, method="DELETE")
    with pytest.raises(ProviderUnavailableError) as caught:
        await provider.destroy("31415900")
    assert caught.value.status == status
    assert caught.value.retryable
    assert len(fake.requests) == 4


class FlakyTransport(httpx.AsyncBaseTransport):
    """Refuses the first ``failures`` connections, then passes requests to ``inner``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, failures: int | None) -> None:
        self.inner = inner
        self.failures = failures

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.failures is None or self.failures > 0:
            if self.failures is not None:
                self.failures -= 1
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize(("failures", "succeeds"), [(2, True), (None, False)])
async def test_network_errors_are_retried(
    fake: FakeVastAi, sleeps: Sleeps, failures: int | None, succeeds: bool
) -> None:
    transport = FlakyTransport(httpx.ASGITransport(app=fake), failures)
    provider = VastAiProvider(
        KEY, base_url=BASE, transport=transport, sleep=sleeps, jitter=lambda: 1.0
    )
    async with provider:
        if succeeds:
            assert await provider.search(OfferQuery(limit=2))
            assert sleeps.delays == [0.5, 1.0]
        else:
            with pytest.raises(ProviderUnavailableError) as caught:
                await provider.search(OfferQuery())
            assert "ConnectError after 4 attempts" in str(caught.value)
            assert fake.requests == []


async def test_api_key_is_never_logged_or_shown(
    fake: FakeVastAi, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.rate_limit(count=1)
    fake.server_errors(count=1, status=502)
    async with make_provider(fake, sleeps) as provider:
        await provider.search(OfferQuery())
        rented = await provider.rent(str(RTX4090_US), RentRequest(label="gi-log"))
        await provider.status(rented.instance_id)
        await provider.destroy(rented.instance_id)
        assert KEY not in repr(provider)
    async with make_provider(fake, sleeps, api_key="wrong-" + KEY) as provider:
        with pytest.raises(ProviderAuthError) as caught:
            await provider.list_instances()

    assert "try 2 of 4" in caplog.text  # the retries were logged ...
    assert KEY not in caplog.text  # ... without the key
    assert KEY not in str(caught.value)
    assert all(KEY not in str(r.query) for r in fake.requests)


async def test_paths_are_appended_to_the_origin_exactly(fake: FakeVastAi, sleeps: Sleeps) -> None:
    assert VastAiProvider.from_env({}).base_url == "https://console.vast.ai"
    env = {"VASTAI_API_URL": "http://vast.test/", "VASTAI_API_KEY": KEY}
    provider = VastAiProvider.from_env(env, transport=httpx.ASGITransport(app=fake), sleep=sleeps)
    async with provider:
        assert provider.base_url == "http://vast.test"
        assert provider.name == "vast.ai"
        await provider.search(OfferQuery(limit=1))
        await provider.list_instances()
    assert [r.path for r in fake.requests] == ["/api/v0/bundles/", "/api/v1/instances/"]


async def test_an_injected_client_is_used_and_left_open(fake: FakeVastAi) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake)) as client:
        provider = VastAiProvider(KEY, base_url=BASE, client=client)
        assert await provider.search(OfferQuery(limit=1))
        await provider.aclose()
        assert not client.is_closed
    with pytest.raises(ValueError, match="either client or transport"):
        VastAiProvider(KEY, client=client, transport=httpx.ASGITransport(app=fake))


# ============================================================================ over a real port


async def test_full_flow_over_a_loopback_port(
    vast_clock: ManualClock, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_fake_vastai(FakeVastAi(clock=vast_clock)) as (url, fake):
        monkeypatch.setenv("VASTAI_API_URL", url)
        monkeypatch.setenv("VASTAI_API_KEY", KEY)
        async with VastAiProvider.from_env(sleep=sleeps) as provider:
            assert provider.base_url == url
            [offer] = await provider.search(OfferQuery(gpu_model="3090"))
            rented = await provider.rent(offer.offer_id, RentRequest(label="gi-port"))
            vast_clock.advance(10)
            running = await provider.status(rented.instance_id)
            assert running.status == "running"
            assert running.port is not None
            assert [i.instance_id for i in await provider.list_instances()] == [rented.instance_id]
            await provider.destroy(rented.instance_id)
            with pytest.raises(InstanceNotFoundError):
                await provider.status(rented.instance_id)

    assert [(r.method, r.path) for r in fake.requests] == [
        ("POST", "/api/v0/bundles/"),
        ("PUT", f"/api/v0/asks/{offer.offer_id}/"),
        ("GET", f"/api/v0/instances/{rented.instance_id}/"),
        ("GET", "/api/v1/instances/"),
        ("DELETE", f"/api/v0/instances/{rented.instance_id}/"),
        ("GET", f"/api/v0/instances/{rented.instance_id}/"),
    ]
    assert fake.requests[0].headers["user-agent"].startswith("aiserve-gpuproxy/")


async def test_timeouts_are_retried_over_a_loopback_port(fake: FakeVastAi, sleeps: Sleeps) -> None:
    with fake.serve() as url:
        fake.slow(0.6, count=1)
        async with VastAiProvider(KEY, base_url=url, timeout=0.15, sleep=sleeps) as provider:
            assert await provider.search(OfferQuery(limit=1))
        assert len(fake.requests) == 2
        assert len(sleeps.delays) == 1

        fake.requests.clear()
        fake.slow(0.6, count=None)
        async with VastAiProvider(
            KEY, base_url=url, timeout=0.15, sleep=sleeps, max_attempts=3
        ) as provider:
            with pytest.raises(ProviderUnavailableError, match="ReadTimeout after 3 attempts"):
                await provider.list_instances()
        assert len(fake.requests) == 3
        fake.clear_injections()


async def test_a_closed_port_is_unavailable(sleeps: Sleeps) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        async with VastAiProvider(KEY, base_url=f"http://127.0.0.1:{port}", sleep=sleeps) as p:
            with pytest.raises(ProviderUnavailableError, match="ConnectError"):
                await p.status("31415900")
    assert len(sleeps.delays) == 3
