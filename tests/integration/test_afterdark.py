"""The AfterDark adapter against the fake AfterDark API (``docs/afterdark-contract.md``)."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from domain.ports.payments import (
    CardDeclinedError,
    ChargeRequest,
    InvalidPaymentRequestError,
    PaymentAuthError,
    PaymentUnavailableError,
)
from infrastructure.payments.afterdark import AfterDarkGateway, looks_like_card_number
from tests.fake_servers.afterdark import CARD_FIELDS, FakeAfterDark, running_afterdark

pytestmark = pytest.mark.anyio

KEY = "ad_test_key"
PAN = re.compile(rb"(?<![0-9])(?:[0-9][ -]?){12,19}(?![0-9])")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> Iterator[FakeAfterDark]:
    with running_afterdark(KEY) as server:
        yield server


@pytest.fixture
async def gateway(fake: FakeAfterDark) -> AsyncIterator[AfterDarkGateway]:
    async with AfterDarkGateway(KEY, base_url=fake.url, backoff_s=0.0) as g:
        yield g


def charge_request(
    payment_method: str = "tok_ok", *, key: str = "idem-1", **changes: Any
) -> ChargeRequest:
    fields: dict[str, Any] = {
        "payment_id": "pay_0001",
        "user_id": "user_42",
        "amount_cents": 2500,
        "currency": "usd",
        "payment_method": payment_method,
        "idempotency_key": key,
        "description": "GPU Proxy credits",
    }
    fields.update(changes)
    return ChargeRequest(**fields)


def assert_no_card_data(fake: FakeAfterDark) -> None:
    for request in fake.requests:
        assert not PAN.search(request.body), request.body
        body = request.json()
        if isinstance(body, dict):
            assert not CARD_FIELDS & set(body)


# ============================================================================ charges


async def test_successful_charge(fake: FakeAfterDark, gateway: AfterDarkGateway) -> None:
    result = await gateway.charge(charge_request())

    assert result.status == "succeeded"
    assert result.external_id.startswith("ch_")
    assert result.charge_id == result.external_id
    assert (result.amount_cents, result.currency) == (2500, "usd")
    assert (result.card_brand, result.card_last4) == ("visa", "4242")
    assert gateway.name == "afterdark"
    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/charges")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["idempotency-key"] == "idem-1"
    assert request.json() == {
        "amount_cents": 2500,
        "currency": "usd",
        "payment_token": "tok_ok",
        "reference": "pay_0001",
        "description": "GPU Proxy credits",
        "metadata": {"user_id": "user_42"},
    }
    assert fake.charges[result.external_id]["reference"] == "pay_0001"


async def test_declined_card(fake: FakeAfterDark, gateway: AfterDarkGateway) -> None:
    with pytest.raises(CardDeclinedError) as caught:
        await gateway.charge(charge_request("tok_decline"))
    assert (caught.value.code, caught.value.status) == ("card_declined", 402)
    assert caught.value.processor == "afterdark"
    assert not caught.value.retryable
    [charge] = fake.charges.values()
    assert charge["status"] == "failed"
    status = await gateway.status(charge["id"])
    assert (status.status, status.failure_code) == ("failed", "card_declined")

    with pytest.raises(CardDeclinedError) as again:  # a replay declines again, charges nothing
        await gateway.charge(charge_request("tok_decline"))
    assert again.value.code == "card_declined"
    assert fake.charge_count == 1


async def test_insufficient_funds(gateway: AfterDarkGateway) -> None:
    with pytest.raises(CardDeclinedError) as caught:
        await gateway.charge(charge_request("tok_insufficient_funds"))
    assert caught.value.code == "insufficient_funds"


async def test_pending_charge_then_settled(fake: FakeAfterDark, gateway: AfterDarkGateway) -> None:
    pending = await gateway.charge(charge_request("tok_pending"))
    assert pending.status == "pending"
    assert (await gateway.status(pending.external_id)).status == "pending"

    fake.settle(pending.external_id, "succeeded")
    settled = await gateway.status(pending.external_id)
    assert settled.status == "succeeded"
    assert settled.amount_cents == 2500

    other = await gateway.charge(charge_request("tok_pending", key="idem-2"))
    fake.settle(other.external_id, "failed", failure_code="insufficient_funds")
    failed = await gateway.status(other.external_id)
    assert (failed.status, failed.failure_code) == ("failed", "insufficient_funds")
    assert failed.failure_message == "Your card has insufficient funds."


async def test_unknown_charge_is_not_found(gateway: AfterDarkGateway) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.status("ch_doesnotexist")
    assert (caught.value.code, caught.value.status) == ("not_found", 404)


async def test_ids_are_never_put_in_a_path_unchecked(
    fake: FakeAfterDark, gateway: AfterDarkGateway
) -> None:
    for bad in ("", "../v1/charges", "ch_1?x=1", "ch 1"):
        with pytest.raises(InvalidPaymentRequestError):
            await gateway.status(bad)
    assert fake.requests == []


# ============================================================================ idempotency


async def test_same_key_same_request_replays(
    fake: FakeAfterDark, gateway: AfterDarkGateway
) -> None:
    first = await gateway.charge(charge_request())
    second = await gateway.charge(charge_request())
    assert second == first
    assert fake.charge_count == 1
    assert fake.replays == 1


async def test_same_key_different_request_is_refused(
    fake: FakeAfterDark, gateway: AfterDarkGateway
) -> None:
    await gateway.charge(charge_request())
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(charge_request(amount_cents=9900))
    assert (caught.value.code, caught.value.status) == ("idempotency_key_reused", 409)
    assert fake.charge_count == 1


@pytest.mark.parametrize("kind", ["http500", "http502", "http503", "http429", "lost", "drop"])
async def test_transient_failure_is_retried_with_the_same_key(
    fake: FakeAfterDark, gateway: AfterDarkGateway, kind: str
) -> None:
    fake.fail_next(1, kind, method="POST")
    result = await gateway.charge(charge_request())

    assert result.status == "succeeded"
    assert fake.charge_count == 1  # "lost"/"drop" charged on try 1: try 2 is a replay
    posts = fake.requests_to("POST", "/v1/charges")
    assert len(posts) == 2
    assert {p.headers["idempotency-key"] for p in posts} == {"idem-1"}
    assert posts[0].body == posts[1].body


async def test_persistent_failure_is_unavailable(fake: FakeAfterDark) -> None:
    fake.fail_next(10, "http503")
    async with AfterDarkGateway(KEY, base_url=fake.url, retries=2, backoff_s=0.0) as gateway:
        with pytest.raises(PaymentUnavailableError) as caught:
            await gateway.charge(charge_request())
    assert caught.value.retryable
    assert caught.value.status == 503
    assert len(fake.requests) == 3
    assert fake.charge_count == 0


async def test_dead_url_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AfterDarkGateway(
        KEY, base_url=f"http://127.0.0.1:{port}", retries=1, backoff_s=0.0
    ) as gateway:
        with pytest.raises(PaymentUnavailableError):
            await gateway.status("ch_1")


# ============================================================================ auth and input


async def test_wrong_key_is_an_auth_error(fake: FakeAfterDark) -> None:
    async with AfterDarkGateway("ad_wrong", base_url=fake.url, backoff_s=0.0) as gateway:
        with pytest.raises(PaymentAuthError) as caught:
            await gateway.charge(charge_request())
        assert "ad_wrong" not in repr(gateway)
    assert (caught.value.code, caught.value.status) == ("unauthorized", 401)
    assert "ad_wrong" not in str(caught.value)
    assert len(fake.requests) == 1  # not retried
    assert fake.charge_count == 0


async def test_unknown_token_is_an_invalid_request(gateway: AfterDarkGateway) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(charge_request("tok_unknown"))
    assert (caught.value.code, caught.value.status) == ("invalid_payment_token", 400)


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"amount_cents": 0}, "invalid_amount"),
        ({"amount_cents": -5}, "invalid_amount"),
        ({"idempotency_key": ""}, "invalid_key"),
        ({"payment_method": ""}, "invalid_token"),
        ({"currency": "dollars"}, "invalid_currency"),
    ],
)
async def test_bad_requests_are_refused_locally(
    fake: FakeAfterDark, gateway: AfterDarkGateway, changes: dict[str, Any], code: str
) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(charge_request(**changes))
    assert caught.value.code == code
    assert fake.requests == []


async def test_other_currencies_are_refused_by_afterdark(gateway: AfterDarkGateway) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(charge_request(currency="EUR"))
    assert caught.value.code == "unsupported_currency"


def test_base_url_must_be_https() -> None:
    with pytest.raises(ValueError, match="https"):
        AfterDarkGateway(KEY, base_url="http://billing.afterdarksys.com")


# ============================================================================ refunds


async def test_full_refund(fake: FakeAfterDark, gateway: AfterDarkGateway) -> None:
    charge = await gateway.charge(charge_request())
    refund = await gateway.refund(charge.external_id, 2500, idempotency_key="refund-1")
    assert refund.status == "succeeded"
    assert refund.amount_cents == 2500
    assert refund.external_id.startswith("rf_")
    [request] = fake.requests_to("POST", f"/v1/charges/{charge.external_id}/refunds")
    assert request.json() == {"amount_cents": 2500}
    assert request.headers["idempotency-key"] == "refund-1"
    assert fake.charges[charge.external_id]["amount_refunded_cents"] == 2500


async def test_partial_refunds_and_over_refund(
    fake: FakeAfterDark, gateway: AfterDarkGateway
) -> None:
    charge = await gateway.charge(charge_request())
    first = await gateway.refund(charge.external_id, 1000, idempotency_key="r1")
    replay = await gateway.refund(charge.external_id, 1000, idempotency_key="r1")
    assert replay == first  # the same key refunds once
    await gateway.refund(charge.external_id, 1000, idempotency_key="r2")
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.refund(charge.external_id, 501, idempotency_key="r3")
    assert (caught.value.code, caught.value.status) == ("amount_exceeds_refundable", 400)
    last = await gateway.refund(charge.external_id, 500, idempotency_key="r3")
    assert last.amount_cents == 500
    assert fake.charges[charge.external_id]["amount_refunded_cents"] == 2500
    assert len(fake.refunds) == 3


async def test_refund_of_a_pending_charge_is_refused(gateway: AfterDarkGateway) -> None:
    charge = await gateway.charge(charge_request("tok_pending"))
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.refund(charge.external_id, 100, idempotency_key="r1")
    assert (caught.value.code, caught.value.status) == ("charge_not_refundable", 409)


async def test_refund_of_an_unknown_charge(gateway: AfterDarkGateway) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.refund("ch_missing", 100, idempotency_key="r1")
    assert caught.value.code == "not_found"


# ============================================================================ card data


@pytest.mark.parametrize(
    "pan", ["4242424242424242", "4242 4242 4242 4242", "5555-5555-5555-4444", "378282246310005"]
)
async def test_card_numbers_are_never_sent(
    fake: FakeAfterDark, gateway: AfterDarkGateway, pan: str
) -> None:
    assert looks_like_card_number(pan)
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(charge_request(pan))
    assert caught.value.code == "raw_card_data_refused"
    assert pan not in str(caught.value)
    assert fake.requests == []


async def test_no_card_data_in_any_request(fake: FakeAfterDark, gateway: AfterDarkGateway) -> None:
    ok = await gateway.charge(charge_request())
    pending = await gateway.charge(charge_request("tok_pending", key="k2"))
    with pytest.raises(CardDeclinedError):
        await gateway.charge(charge_request("tok_decline", key="k3"))
    fake.settle(pending.external_id, "succeeded")
    await gateway.status(pending.external_id)
    await gateway.refund(ok.external_id, 100, idempotency_key="k4")
    assert len(fake.requests) == 5
    assert_no_card_data(fake)


def test_the_fake_refuses_card_data(fake: FakeAfterDark) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": "x"}
    body = {
        "amount_cents": 100,
        "currency": "usd",
        "payment_token": "tok_ok",
        "reference": "p1",
        "card_number": "4242424242424242",
    }
    with httpx.Client(base_url=fake.url, headers=headers) as client:
        answer = client.post("/v1/charges", json=body)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "raw_card_data_refused"
        del body["card_number"]
        answer = client.post("/v1/charges", json=dict(body, payment_token="4000 0000 0000 0002"))
        assert answer.json()["error"]["code"] == "raw_card_data_refused"
        missing_key = client.post("/v1/charges", json=body, headers={"Idempotency-Key": ""})
        assert missing_key.json()["error"]["code"] == "idempotency_key_required"
        created = client.post("/v1/charges", json=body, headers={"Idempotency-Key": "y"})
        replayed = client.post("/v1/charges", json=body, headers={"Idempotency-Key": "y"})
        assert (created.status_code, replayed.status_code) == (201, 201)
        assert replayed.json() == created.json()
        assert replayed.headers["idempotent-replayed"] == "true"
        assert client.get("/v1/nothing").status_code == 404
        assert client.delete("/v1/charges").status_code == 405
    assert fake.charge_count == 1
