"""The real io.net client (``IoNetProvider``) against the fake io.net VMaaS API.

Assumptions taken from provider-apis.md §5 "decided gaps" (io.net documents none of them): a bad
key is 401 ``Invalid API key provided!``, short credit is 402 ``Insufficient IO Credits``, sold
out is 400 ``Not enough available hardware``, rate limiting is 429 ``Too Many Requests`` with an
optional ``Retry-After``, ``/deployments`` pages are 0-based, ``POST /deploy`` answers with an
empty body.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.marketplace import (
    InstanceNotFoundError,
    InsufficientProviderCreditError,
    InvalidProviderRequestError,
    OfferQuery,
    OfferUnavailableError,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimitedError,
    ProviderUnavailableError,
    RentRequest,
)
from infrastructure.providers.ionet import (
    DEFAULT_API_URL,
    IoNetProvider,
    OfferRef,
    decode_offer_id,
    encode_offer_id,
    map_status,
    usd_to_micros_ceil,
)
from tests.fake_servers.ionet import API_KEY, START, VMAAS, FakeIoNet, HardwareRow, ManualClock

pytestmark = pytest.mark.anyio

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBroker broker"
RTX4090_US = "12:1:US"


class Sleeps(list[float]):
    """An injected ``sleep`` that only records how long the client wanted to wait."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def fake(clock: ManualClock) -> FakeIoNet:
    return FakeIoNet(clock=clock)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_provider(fake: FakeIoNet, sleeps: Sleeps, **kwargs: object) -> IoNetProvider:
    api_key = kwargs.pop("api_key", API_KEY)
    options: dict[str, object] = {
        "transport": fake.transport(),
        "sleep": sleeps,
        "ssh_keys": {"broker": SSH_KEY},
        "find_interval": 0.0,
    }
    options.update(kwargs)
    return IoNetProvider(str(api_key), **options)  # type: ignore[arg-type]


@pytest.fixture
async def provider(fake: FakeIoNet, sleeps: Sleeps) -> AsyncIterator[IoNetProvider]:
    client = make_provider(fake, sleeps)
    yield client
    await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ----------------------------------------------------------------------------- search


async def test_search_normalises_rows_into_offers(provider: IoNetProvider, fake: FakeIoNet) -> None:
    offers = await provider.search(OfferQuery())

    by_id = {o.offer_id: o for o in offers}
    # Sold out (L40S) and location-less (RTX A6000) rows are not offered.
    assert sorted(by_id) == sorted(
        [
            "12:1:US",
            "12:2:US",
            "12:1:FI",
            "7:1:DE",
            "31:1:US",
            "H100_sxm5x8:8:FI",
            "B200_sxm6x8:8:US",
        ]
    )
    assert [o.price_per_hour for o in offers] == sorted(o.price_per_hour for o in offers)
    rtx = by_id[RTX4090_US]
    assert (rtx.provider, rtx.gpu_model, rtx.num_gpus, rtx.vram_gb) == (
        "io.net",
        "RTX 4090",
        1,
        24.0,
    )
    assert (rtx.price_per_hour, rtx.location, rtx.reliability) == (310_000, "US", 1.0)
    assert rtx.metadata["hardware_id"] == 12
    assert rtx.metadata["hardware_name"] == "GeForce RTX 4090"
    assert by_id["12:2:US"].price_per_hour == 620_000  # price is for the whole VM
    h100 = by_id["H100_sxm5x8:8:FI"]
    assert (h100.gpu_model, h100.num_gpus, h100.vram_gb, h100.price_per_hour) == (
        "H100 80GB SXM5",
        8,
        80.0,
        17_600_000,
    )
    assert h100.metadata["hardware_id"] == "H100_sxm5x8"
    assert by_id["B200_sxm6x8:8:US"].price_per_hour == 39_920_000
    assert by_id["7:1:DE"].price_per_hour == 123_457  # 0.1234567 USD: rounded up, not floated
    assert decode_offer_id(h100.offer_id) == OfferRef("H100_sxm5x8", 8, "FI")

    [request] = fake.requests
    assert (request.method, request.path, request.query) == ("GET", f"{VMAAS}/hardware", {})
    assert request.headers["x-api-key"] == API_KEY
    assert "authorization" not in request.headers


async def test_search_sends_what_io_net_filters_and_rechecks_the_rest(
    provider: IoNetProvider, fake: FakeIoNet
) -> None:
    query = OfferQuery(
        gpu_model="4090", min_vram_gb=23.5, max_price_per_hour=300_000, region="fi", num_gpus=1
    )
    offers = await provider.search(query)

    assert [o.offer_id for o in offers] == ["12:1:FI"]
    assert fake.requests[0].query == {"gpu": ["4090"], "gpu_memory_min": ["23"]}
    assert [o.offer_id for o in await provider.search(OfferQuery(limit=2))] == [
        "7:1:DE",
        "12:1:FI",
    ]
    big = await provider.search(OfferQuery(min_vram_gb=100))
    assert [o.gpu_model for o in big] == ["B200"]


async def test_search_skips_malformed_rows(fake: FakeIoNet, sleeps: Sleeps) -> None:
    fake.hardware.append(HardwareRow(99, "Broken", 0, Decimal("1"), "US", 8))  # 0 cards
    fake.hardware.append(HardwareRow(98, "Free GPU", 1, Decimal("-1"), "US", 8))
    client = make_provider(fake, sleeps)
    offers = await client.search(OfferQuery())
    assert not {o.offer_id for o in offers} & {"99:0:US", "98:1:US"}
    await client.aclose()


# ----------------------------------------------------------------------------- lifecycle


async def test_rent_poll_and_destroy_with_the_documented_refund(
    fake: FakeIoNet, sleeps: Sleeps, clock: ManualClock
) -> None:
    fake.balance = Decimal("10")
    client = make_provider(fake, sleeps, duration_hours=3)

    rented = await client.rent(RTX4090_US, RentRequest(label="inst-1", ports=(8000, 22)))

    [dep] = fake.deployments.values()
    assert (rented.instance_id, rented.status, rented.label) == (dep.id, "provisioning", "inst-1")
    assert rented.raw_status == "deployment requested"
    # 0.31 USD/h x 3 h + 5 % fee = 0.9765 prepaid; per hour 0.3255 USD.
    assert rented.price_per_hour == 325_500
    assert fake.balance == Decimal("10") - Decimal("0.9765")

    [quote] = fake.requests_to("/price")
    assert quote.query == {
        "location_ids": ['["US"]'],
        "hardware_id": ["12"],
        "currency": ["usdc"],
        "duration_hours": ["3"],
        "gpus_per_vm": ["1"],
        "replica_count": ["1"],
    }
    [deploy] = fake.requests_to("/deploy", "POST")
    assert deploy.headers["x-api-key"] == API_KEY
    assert deploy.headers["content-type"] == "application/json"
    assert deploy.body == {
        "resource_private_name": "inst-1",
        "duration_hours": 3,
        "gpus_per_vm": 1,
        "hardware_id": 12,
        "location_ids": ["US"],
        "vm_image_type": "general",
        "ssh_keys": {"broker": SSH_KEY},
        "network_services": {
            "port-8000": {"port": 8000, "protocol": "tcp", "whitelist": ["0.0.0.0/0"]},
            "port-22": {"port": 22, "protocol": "tcp", "whitelist": ["0.0.0.0/0"]},
        },
    }

    polled = await client.status(dep.id)
    assert (polled.status, polled.raw_status, polled.host) == (
        "provisioning",
        "deployment requested",
        None,
    )
    assert not fake.requests_to(f"/deployment/{dep.id}/vms")

    clock.advance(121)
    running = await client.status(dep.id)
    assert (running.status, running.raw_status) == ("running", "running")
    assert (running.host, running.port) == (dep.public_ip, 30000)  # first requested port
    assert running.started_at == START + 120
    [vms] = fake.requests_to(f"/deployment/{dep.id}/vms")
    assert vms.query == {"page": ["1"], "page_size": ["20"]}

    # Running since 120 s after the deploy; 1.2 h active: pay 1.2 h, 1.8 h refunded (docs).
    clock.advance(4320 - 1)
    await client.destroy(dep.id)
    assert fake.refunds[dep.id] == Decimal("0.5859")
    assert fake.balance == Decimal("10") - Decimal("0.9765") + Decimal("0.5859")
    gone = await client.status(dep.id)
    assert (gone.status, gone.raw_status) == ("terminated", "destroyed")

    await client.destroy(dep.id)  # idempotent: 404 is "already gone"
    assert [r.method for r in fake.requests_to(f"/deployment/{dep.id}")] == [
        "GET",
        "GET",
        "DELETE",
        "GET",
        "DELETE",
    ]
    assert sleeps == []
    await client.aclose()


async def test_first_hour_is_never_refunded(
    provider: IoNetProvider, fake: FakeIoNet, clock: ManualClock
) -> None:
    rented = await provider.rent(RTX4090_US, RentRequest(label="short"))
    clock.advance(600)
    await provider.destroy(rented.instance_id)
    assert fake.refunds[rented.instance_id] == Decimal(0)


async def test_rent_finds_the_deployment_by_label_when_deploy_answers_empty(
    provider: IoNetProvider, fake: FakeIoNet
) -> None:
    for n in range(3):
        fake.create_deployment(f"someone-else-{n}")
    rented = await provider.rent(RTX4090_US, RentRequest(label="mine"))

    [mine] = [d for d in fake.deployments.values() if d.name == "mine"]
    assert rented.instance_id == mine.id
    assert rented.label == "mine"
    assert fake.requests_to("/deployments")


async def test_a_deployment_listed_late_is_waited_for(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.list_lag = 2
    rented = await provider.rent(RTX4090_US, RentRequest(label="slow-list"))
    assert rented.instance_id == next(iter(fake.deployments))
    assert len(fake.requests_to("/deployments")) == 3
    assert sleeps == [0.0, 0.0]


async def test_a_deployment_never_listed_is_left_to_the_reconciler(
    fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.list_lag = 10
    client = make_provider(fake, sleeps, find_attempts=2)
    with pytest.raises(ProviderError, match=r"'hidden'.*reconciler") as caught:
        await client.rent(RTX4090_US, RentRequest(label="hidden"))
    assert not caught.value.retryable  # renting again would make a second deployment
    assert len(fake.deployments) == 1
    await client.aclose()


async def test_rent_uses_the_id_when_deploy_returns_one(
    provider: IoNetProvider, fake: FakeIoNet
) -> None:
    fake.deploy_returns_id = True
    rented = await provider.rent("H100_sxm5x8:8:FI", RentRequest(label="big"))

    [dep] = fake.deployments.values()
    assert rented.instance_id == dep.id
    assert fake.requests_to("/deployments") == []
    assert fake.requests_to("/deploy")[0].body["hardware_id"] == "H100_sxm5x8"


async def test_a_lost_deploy_answer_does_not_deploy_twice(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_next(1, 502, path="/deploy", after_processing=True)
    rented = await provider.rent(RTX4090_US, RentRequest(label="once"))

    assert [d.name for d in fake.deployments.values()] == ["once"]
    assert rented.instance_id == next(iter(fake.deployments))
    assert len(fake.requests_to("/deploy")) == 1


async def test_a_deploy_refused_before_processing_is_sent_again(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_next(1, 503, path="/deploy")
    rented = await provider.rent(RTX4090_US, RentRequest(label="again"))

    assert [d.name for d in fake.deployments.values()] == ["again"]
    assert rented.instance_id == next(iter(fake.deployments))
    assert len(fake.requests_to("/deploy")) == 2
    assert sleeps == [0.5]


async def test_deploy_rate_limited_is_retried(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_next(2, 429, path="/deploy")
    await provider.rent(RTX4090_US, RentRequest(label="busy"))
    assert len(fake.deployments) == 1
    assert len(fake.requests_to("/deploy")) == 3
    assert sleeps == [0.5, 1.0]


async def test_extend_buys_more_hours(
    provider: IoNetProvider, fake: FakeIoNet, clock: ManualClock
) -> None:
    rented = await provider.rent(RTX4090_US, RentRequest(label="longer"))
    clock.advance(121)
    extended = await provider.extend(rented.instance_id, 2)
    assert extended.status == "running"
    assert fake.requests_to(f"/deployment/{rented.instance_id}/extend")[0].body == {
        "duration_hours": 2
    }
    dep = fake.deployments[rented.instance_id]
    assert dep.duration_hours == 3
    assert dep.amount_paid == Decimal("0.9765")  # 0.3255 + 2 x 0.3255

    clock.advance(600 - 1)  # ten minutes of running
    async with httpx.AsyncClient(transport=fake.transport(), base_url=DEFAULT_API_URL) as http:
        answer = await http.get(f"{VMAAS}/deployment/{dep.id}", headers={"x-api-key": API_KEY})
    details = answer.json()["data"]
    assert (details["compute_minutes_served"], details["compute_minutes_remaining"]) == (10, 170)
    assert details["completed_percent"] == 5.56
    assert details["amount_paid"] == 0.9765


async def test_list_instances_reads_every_page(fake: FakeIoNet, sleeps: Sleeps) -> None:
    for n in range(23):
        fake.create_deployment(f"job-{n:02d}")
    client = make_provider(fake, sleeps, page_size=10)

    listed = await client.list_instances()

    assert sorted(i.label or "" for i in listed) == [f"job-{n:02d}" for n in range(23)]
    assert {i.status for i in listed} == {"provisioning"}
    assert {i.raw_status for i in listed} == {"deployment requested"}
    pages = [r.query for r in fake.requests_to("/deployments")]
    assert pages == [{"page": [str(p)], "page_size": ["10"]} for p in (0, 1, 2)]
    await client.aclose()


async def test_list_instances_adapts_to_one_based_pages(fake: FakeIoNet, sleeps: Sleeps) -> None:
    fake.deployments_page_base = 1
    for n in range(12):
        fake.create_deployment(f"job-{n:02d}")
    client = make_provider(fake, sleeps, page_size=5)

    assert len(await client.list_instances()) == 12
    pages = [r.query["page"] for r in fake.requests_to("/deployments")]
    assert pages == [["0"], ["1"], ["2"], ["3"]]  # page 0 refused with 422, then 1-based
    assert len(await client.list_instances()) == 12  # learnt: no second refusal
    assert [r.query["page"] for r in fake.requests_to("/deployments")][4:] == [["1"], ["2"], ["3"]]
    await client.aclose()


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("deployment requested", "provisioning"),
        ("running", "running"),
        ("Active", "running"),
        ("termination requested", "stopping"),
        ("termination_requested", "stopping"),
        ("completed", "terminated"),
        ("destroyed", "terminated"),
        ("failed", "failed"),
        ("paused", "unknown"),
        (None, "unknown"),
    ],
)
async def test_status_words_map_to_our_states(raw: str | None, state: str) -> None:
    assert map_status(raw) == state


async def test_lifecycle_states_through_the_api(
    fake: FakeIoNet, sleeps: Sleeps, clock: ManualClock
) -> None:
    fake.termination_seconds = 30
    client = make_provider(fake, sleeps)
    first = await client.rent(RTX4090_US, RentRequest(label="a"))
    second = await client.rent(RTX4090_US, RentRequest(label="b"))
    fake.fail_provisioning = True
    third = await client.rent("12:1:FI", RentRequest(label="c"))
    clock.advance(121)

    await client.destroy(first.instance_id)
    stopping = await client.status(first.instance_id)
    assert (stopping.status, stopping.raw_status) == ("stopping", "termination requested")
    assert (await client.status(third.instance_id)).status == "failed"
    fake.set_status(second.instance_id, "paused")
    weird = await client.status(second.instance_id)
    assert (weird.status, weird.raw_status) == ("unknown", "paused")
    fake.set_status(second.instance_id, None)

    clock.advance(3600)
    assert (await client.status(first.instance_id)).raw_status == "destroyed"
    done = await client.status(second.instance_id)
    assert (done.status, done.raw_status) == ("terminated", "completed")
    states = {i.label: i.status for i in await client.list_instances()}
    assert states == {"a": "terminated", "b": "terminated", "c": "failed"}
    await client.aclose()


async def test_a_deployment_that_never_runs_stays_provisioning(
    provider: IoNetProvider, fake: FakeIoNet, clock: ManualClock
) -> None:
    fake.never_running = True
    rented = await provider.rent(RTX4090_US, RentRequest(label="stuck"))
    clock.advance(24 * 3600)
    assert (await provider.status(rented.instance_id)).status == "provisioning"


# ----------------------------------------------------------------------------- errors


async def test_a_bad_key_is_an_auth_error_and_is_not_retried(
    fake: FakeIoNet, sleeps: Sleeps
) -> None:
    client = make_provider(fake, sleeps, api_key="wrong-key")
    with pytest.raises(ProviderAuthError, match="Invalid API key provided!") as caught:
        await client.search(OfferQuery())
    assert caught.value.status == 401
    assert not caught.value.retryable
    assert len(fake.requests) == 1
    assert sleeps == []
    fake.auth_status = 403
    with pytest.raises(ProviderAuthError):
        await client.status("anything")
    await client.aclose()


async def test_missing_key_is_refused_up_front() -> None:
    with pytest.raises(ProviderAuthError, match="IONET_API_KEY"):
        IoNetProvider.from_env({})


async def test_insufficient_credits(provider: IoNetProvider, fake: FakeIoNet) -> None:
    fake.balance = Decimal("0.10")
    with pytest.raises(InsufficientProviderCreditError, match="Insufficient IO Credits") as caught:
        await provider.rent(RTX4090_US, RentRequest(label="poor"))
    assert caught.value.status == 402
    assert fake.deployments == {}


async def test_sold_out_is_seen_in_the_quote_before_deploying(
    provider: IoNetProvider, fake: FakeIoNet
) -> None:
    fake.sell_out(12, "US")
    with pytest.raises(OfferUnavailableError, match="Not enough available hardware"):
        await provider.rent(RTX4090_US, RentRequest(label="late"))
    assert fake.requests_to("/deploy") == []
    assert RTX4090_US not in {o.offer_id for o in await provider.search(OfferQuery())}


async def test_sold_out_at_deploy_time(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_deploy(1)  # the quote still said available: someone else took the last one
    with pytest.raises(OfferUnavailableError, match="Not enough available hardware") as caught:
        await provider.rent(RTX4090_US, RentRequest(label="raced"))
    assert caught.value.status == 400
    assert fake.deployments == {}

    fake.sell_out(12, "US")
    unchecked = make_provider(fake, sleeps, check_availability=False)
    with pytest.raises(OfferUnavailableError, match="Not enough available hardware"):
        await unchecked.rent(RTX4090_US, RentRequest(label="blind"))
    assert fake.requests[-1].path == f"{VMAAS}/deploy"
    assert fake.deployments == {}
    await unchecked.aclose()


async def test_validation_errors_list_every_message(fake: FakeIoNet, sleeps: Sleeps) -> None:
    client = make_provider(fake, sleeps, vm_image_type="gaming")
    with pytest.raises(InvalidProviderRequestError) as caught:
        await client.rent(RTX4090_US, RentRequest(label="bad", ports=(70000,)))
    message = str(caught.value)
    assert caught.value.status == 422
    assert "body.vm_image_type: Input should be 'general' or 'datascience'" in message
    assert (
        "body.network_services.port-70000.port: Input should be less than or equal to 65535"
        in message
    )
    assert sleeps == []
    await client.aclose()


async def test_unknown_ids_and_offers(provider: IoNetProvider, fake: FakeIoNet) -> None:
    with pytest.raises(InstanceNotFoundError) as caught:
        await provider.status("6f1c2e7a-0000-4000-8000-000000000000")
    assert caught.value.status == 404
    await provider.destroy("6f1c2e7a-0000-4000-8000-000000000000")  # already gone: fine
    with pytest.raises(OfferUnavailableError):
        await provider.rent("999:1:US", RentRequest(label="ghost"))
    with pytest.raises(InvalidProviderRequestError):
        await provider.rent("not-an-offer", RentRequest(label="ghost"))


async def test_rate_limit_is_retried_then_succeeds(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_next(2, 429)
    assert await provider.search(OfferQuery())
    assert len(fake.requests_to("/hardware")) == 3
    assert sleeps == [0.5, 1.0]


async def test_retry_after_is_honoured(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_next(1, 429, retry_after="3")
    assert await provider.search(OfferQuery())
    assert sleeps == [3.0]


async def test_persistent_rate_limit_gives_up(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_next(None, 429)
    with pytest.raises(ProviderRateLimitedError, match="Too Many Requests") as caught:
        await provider.search(OfferQuery())
    assert caught.value.retryable
    assert len(fake.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]


async def test_a_503_burst_is_ridden_out(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps, clock: ManualClock
) -> None:
    rented = await provider.rent(RTX4090_US, RentRequest(label="burst"))
    fake.fail_next(3, 503)
    assert (await provider.status(rented.instance_id)).status == "provisioning"
    assert sleeps == [0.5, 1.0, 2.0]
    fake.fail_next(None, 503)
    with pytest.raises(ProviderUnavailableError, match="Service Unavailable") as caught:
        await provider.list_instances()
    assert caught.value.status == 503


async def test_a_500_is_not_retried(
    provider: IoNetProvider, fake: FakeIoNet, sleeps: Sleeps
) -> None:
    fake.fail_next(1, 500)
    with pytest.raises(ProviderUnavailableError):
        await provider.search(OfferQuery())
    assert len(fake.requests) == 1
    assert sleeps == []


async def test_network_errors_are_retried_then_reported(sleeps: Sleeps) -> None:
    client = IoNetProvider(
        API_KEY, base_url=f"http://127.0.0.1:{free_port()}", sleep=sleeps, max_attempts=3
    )
    with pytest.raises(ProviderUnavailableError, match="ConnectError") as caught:
        await client.search(OfferQuery())
    assert caught.value.retryable
    assert sleeps == [0.5, 1.0]
    await client.aclose()


# ----------------------------------------------------------------------------- a real port


async def test_full_cycle_over_a_loopback_port(
    fake: FakeIoNet, sleeps: Sleeps, clock: ManualClock
) -> None:
    fake.fail_next(1, 429, path="/hardware")
    with fake.serve() as origin:
        client = IoNetProvider.from_env(
            {"IONET_API_KEY": API_KEY, "IONET_API_URL": origin + "/"},
            sleep=sleeps,
            ssh_keys={"broker": SSH_KEY},
            find_interval=0.0,
        )
        offers = await client.search(OfferQuery(gpu_model="4090", region="US", num_gpus=1))
        assert [o.offer_id for o in offers] == [RTX4090_US]
        rented = await client.rent(offers[0].offer_id, RentRequest(label="wire"))
        clock.advance(121)
        running = await client.status(rented.instance_id)
        assert (running.status, running.host, running.port) == ("running", "203.0.113.2", 30000)
        await client.destroy(rented.instance_id)
        assert (await client.status(rented.instance_id)).status == "terminated"
        await client.aclose()
    assert sleeps == [0.5]
    paths = {r.path for r in fake.requests}
    assert paths == {
        f"{VMAAS}/hardware",
        f"{VMAAS}/price",
        f"{VMAAS}/deploy",
        f"{VMAAS}/deployments",
        f"{VMAAS}/deployment/{rented.instance_id}",
        f"{VMAAS}/deployment/{rented.instance_id}/vms",
    }
    assert {r.headers["x-api-key"] for r in fake.requests} == {API_KEY}


async def test_timeouts_over_a_loopback_port(fake: FakeIoNet, sleeps: Sleeps) -> None:
    with fake.serve() as origin:
        client = IoNetProvider(API_KEY, base_url=origin, sleep=sleeps, timeout=0.2, max_attempts=2)
        fake.slow(1.0, count=1, path="/hardware")
        assert await client.search(OfferQuery())  # the second try is quick
        assert sleeps == [0.5]

        fake.slow(1.0, path="/hardware")
        started = time.monotonic()
        with pytest.raises(ProviderUnavailableError, match="ReadTimeout"):
            await client.search(OfferQuery())
        assert time.monotonic() - started < 0.9
        fake.clear_faults()
        await client.aclose()


# ----------------------------------------------------------------------------- the key


async def test_the_key_is_never_logged(
    fake: FakeIoNet, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_provider(fake, sleeps)
    fake.fail_next(2, 503)
    await client.search(OfferQuery())
    fake.api_key = "rotated"
    with pytest.raises(ProviderAuthError) as caught:
        await client.search(OfferQuery())
    assert API_KEY not in caplog.text
    assert API_KEY not in str(caught.value)
    assert API_KEY not in repr(client)
    assert "retry 1/3" in caplog.text
    await client.aclose()


async def test_defaults_follow_the_fact_sheet() -> None:
    client = IoNetProvider.from_env({"IONET_API_KEY": "k"})
    assert repr(client) == f"IoNetProvider(base_url={DEFAULT_API_URL!r})"
    assert client.name == "io.net"
    await client.aclose()


# ----------------------------------------------------------------------------- the fake itself


async def test_the_fake_answers_like_fastapi(fake: FakeIoNet) -> None:
    async with httpx.AsyncClient(transport=fake.transport(), base_url=DEFAULT_API_URL) as http:
        anonymous = await http.get(f"{VMAAS}/hardware")
        assert (anonymous.status_code, anonymous.json()) == (
            401,
            {"detail": "Invalid API key provided!"},
        )
        headers = {"x-api-key": API_KEY}
        extra = await http.post(
            f"{VMAAS}/deploy",
            headers=headers,
            json={
                "resource_private_name": "x",
                "duration_hours": 1,
                "gpus_per_vm": 9,
                "hardware_id": 12,
                "location_ids": ["US"],
                "image": "nginx",
            },
        )
        assert extra.status_code == 422
        assert [(e["type"], e["loc"]) for e in extra.json()["detail"]] == [
            ("extra_forbidden", ["body", "image"]),
            ("less_than_equal", ["body", "gpus_per_vm"]),
        ]
        quote = await http.get(f"{VMAAS}/price", headers=headers, params={"hardware_id": "12"})
        assert quote.status_code == 422
        assert {tuple(e["loc"]) for e in quote.json()["detail"]} == {
            ("query", "location_ids"),
            ("query", "currency"),
            ("query", "duration_hours"),
            ("query", "gpus_per_vm"),
            ("query", "replica_count"),
        }
        nowhere = await http.get(f"{VMAAS}/deployment/nope", headers=headers)
        assert (nowhere.status_code, nowhere.json()) == (404, {"detail": "Not found"})
        listed = await http.get(f"{VMAAS}/deployments", headers=headers)
        assert listed.json() == {"data": {"deployments": [], "total": 0, "statuses": []}}


# ----------------------------------------------------------------------------- pure helpers


@given(
    hardware=st.one_of(st.integers(0, 10**6), st.text(min_size=1, max_size=20)),
    gpus=st.integers(1, 8),
    location=st.text(min_size=1, max_size=6),
)
def test_offer_ids_round_trip(hardware: int | str, gpus: int, location: str) -> None:
    ref = OfferRef(hardware, gpus, location)
    assert decode_offer_id(encode_offer_id(ref)) == ref


@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, places=6))
def test_prices_with_six_decimals_are_exact(price: Decimal) -> None:
    assert usd_to_micros_ceil(price) == int(price * 1_000_000)
    assert usd_to_micros_ceil(str(price)) == int(price * 1_000_000)


def test_prices_beyond_six_decimals_round_up_and_floats_are_refused() -> None:
    assert usd_to_micros_ceil(Decimal("0.1234561")) == 123_457
    assert usd_to_micros_ceil(3) == 3_000_000
    with pytest.raises(ValueError, match="float"):
        usd_to_micros_ceil(0.31)


def test_provider_errors_are_provider_errors() -> None:
    assert issubclass(OfferUnavailableError, ProviderError)
