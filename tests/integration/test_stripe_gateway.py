"""The real Stripe adapter (and so the real ``stripe`` library) against the fake Stripe API.

The fake runs on a loopback port (``tests/fake_servers/stripe.py``); the adapter talks to it
through ``stripe.StripeClient`` exactly as it would talk to api.stripe.com. Backoff sleeps are
recorded, not slept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from domain.ports.payments import (
    CardDeclinedError,
    ChargeRequest,
    InvalidPaymentRequestError,
    InvalidWebhookError,
    PaymentAuthError,
    PaymentUnavailableError,
)
from infrastructure.payments.stripe_gateway import (
    TEST_PAYMENT_METHODS,
    StripeCardDeclinedError,
    StripeGateway,
    StripeHttpClient,
)
from tests.fake_servers.stripe import (
    API_VERSION,
    DEFAULT_SECRET_KEY,
    DEFAULT_WEBHOOK_SECRET,
    FakeStripe,
    running_stripe,
)

pytestmark = pytest.mark.anyio

KEY = DEFAULT_SECRET_KEY
WHSEC = DEFAULT_WEBHOOK_SECRET
INTENTS = "/v1/payment_intents"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Sleeps:
    """The library's backoff sleep: records the delays, waits for nothing."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with running_stripe() as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_gateway(fake: FakeStripe, sleeps: Sleeps, **options: Any) -> StripeGateway:
    return StripeGateway(
        options.pop("secret_key", KEY),
        webhook_secret=options.pop("webhook_secret", WHSEC),
        api_base=fake.url,
        http_client=StripeHttpClient(5.0, sleep=sleeps),
        **options,
    )


@pytest.fixture
async def gateway(fake: FakeStripe, sleeps: Sleeps) -> AsyncIterator[StripeGateway]:
    g = make_gateway(fake, sleeps)
    yield g
    await g.aclose()


@contextlib.asynccontextmanager
async def gateway_with(
    fake: FakeStripe, sleeps: Sleeps, **options: Any
) -> AsyncIterator[StripeGateway]:
    g = make_gateway(fake, sleeps, **options)
    try:
        yield g
    finally:
        await g.aclose()


def charge_request(**overrides: Any) -> ChargeRequest:
    values: dict[str, Any] = {
        "payment_id": "pay_0001",
        "user_id": "usr_0001",
        "amount_cents": 2500,
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "idempotency_key": f"charge-{uuid.uuid4()}",
        "description": "GPU Proxy credits",
    }
    values.update(overrides)
    return ChargeRequest(**values)


def assert_no_card_number_sent(fake: FakeStripe) -> None:
    for recorded in fake.requests:
        raw = recorded.raw()
        for number in TEST_PAYMENT_METHODS:
            assert number not in raw
        assert "card[number]" not in raw
        assert "card%5Bnumber%5D" not in raw


async def control(fake: FakeStripe, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A call to the fake's test-control API (or any path, as given)."""
    async with httpx.AsyncClient(base_url=fake.url) as client:
        return await client.request(method, path, **kwargs)


# ============================================================================ charges


async def test_a_good_card_succeeds_with_brand_and_last4(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    result = await gateway.charge(charge_request())

    assert result.status == "succeeded"
    assert result.external_id.startswith("pi_")
    assert (result.amount_cents, result.currency) == (2500, "usd")
    assert (result.card_brand, result.card_last4) == ("visa", "4242")
    assert result.charge_id.startswith("ch_")
    assert result.charge_id == fake.payment_intents[result.external_id]["latest_charge"]
    assert (result.failure_code, result.next_action_url) == ("", "")
    assert_no_card_number_sent(fake)


async def test_the_charge_request_is_what_stripe_expects(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    request = charge_request(payment_id="pay_42", user_id="usr_7")
    await gateway.charge(request)

    [sent] = fake.requests_to("POST", INTENTS)
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["idempotency-key"] == request.idempotency_key
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert sent.headers["stripe-version"] == API_VERSION
    assert sent.params == {
        "amount": "2500",
        "currency": "usd",
        "payment_method": "pm_card_visa",
        "automatic_payment_methods": {"enabled": "true", "allow_redirects": "never"},
        "confirm": "true",
        "metadata": {"payment_id": "pay_42", "user_id": "usr_7"},
        "expand": ["latest_charge", "payment_method"],
        "description": "GPU Proxy credits",
    }
    intent = next(iter(fake.payment_intents.values()))
    assert intent["metadata"] == {"payment_id": "pay_42", "user_id": "usr_7"}


@pytest.mark.parametrize(
    ("token", "brand", "last4"),
    [
        ("pm_card_mastercard", "mastercard", "4444"),
        ("pm_card_amex", "amex", "0005"),
        ("pm_card_visa_debit", "visa", "5556"),
    ],
)
async def test_card_brands(gateway: StripeGateway, token: str, brand: str, last4: str) -> None:
    result = await gateway.charge(charge_request(payment_method=token))
    assert (result.status, result.card_brand, result.card_last4) == ("succeeded", brand, last4)


async def test_a_declined_card_raises_card_declined_and_leaves_the_intent_failed(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    with pytest.raises(StripeCardDeclinedError) as caught:
        await gateway.charge(charge_request(payment_method="pm_card_visa_chargeDeclined"))

    error = caught.value
    assert isinstance(error, CardDeclinedError)
    assert not error.retryable
    assert (error.processor, error.code, error.status) == ("stripe", "card_declined", 402)
    assert error.decline_code == "generic_decline"
    assert error.message == "Your card was declined."
    assert error.payment_intent_id in fake.payment_intents
    assert error.charge_id.startswith("ch_")
    assert fake.payment_intents[error.payment_intent_id]["status"] == "requires_payment_method"

    seen = await gateway.status(error.payment_intent_id)
    assert seen.status == "failed"
    assert (seen.failure_code, seen.failure_message) == ("card_declined", "Your card was declined.")
    assert (seen.card_brand, seen.card_last4) == ("visa", "0002")
    assert "payment_intent.payment_failed" in fake.event_types_for(error.payment_intent_id)


async def test_insufficient_funds_keeps_the_decline_code(gateway: StripeGateway) -> None:
    with pytest.raises(StripeCardDeclinedError) as caught:
        await gateway.charge(
            charge_request(payment_method="pm_card_visa_chargeDeclinedInsufficientFunds")
        )
    assert caught.value.decline_code == "insufficient_funds"
    assert caught.value.message == "Your card has insufficient funds."


async def test_three_d_secure_then_authenticated_through_the_test_api(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    first = await gateway.charge(charge_request(payment_method="pm_card_authenticationRequired"))
    assert first.status == "requires_action"
    assert first.next_action_url.startswith(fake.url)
    assert first.charge_id == ""
    assert (first.card_brand, first.card_last4) == ("visa", "3184")

    answer = await control(
        fake, "POST", f"/_test/payment_intents/{first.external_id}/authenticate", json={}
    )
    assert answer.status_code == 200

    done = await gateway.status(first.external_id)
    assert done.status == "succeeded"
    assert done.charge_id.startswith("ch_")
    assert fake.event_types_for(first.external_id)[-1] == "payment_intent.succeeded"


async def test_three_d_secure_failed_authentication_is_a_failed_charge(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    first = await gateway.charge(charge_request(payment_method="pm_card_threeDSecure2Required"))
    await control(
        fake,
        "POST",
        f"/_test/payment_intents/{first.external_id}/authenticate",
        json={"outcome": "failed"},
    )

    done = await gateway.status(first.external_id)
    assert done.status == "failed"
    assert done.failure_code == "payment_intent_authentication_failure"
    assert "failed authentication" in done.failure_message


async def test_three_d_secure_with_a_return_url_redirects_back(
    fake: FakeStripe, sleeps: Sleeps
) -> None:
    async with gateway_with(fake, sleeps, return_url="https://app.example/pay/return") as g:
        first = await g.charge(
            charge_request(payment_method="pm_card_authenticationRequiredOnSetup")
        )
        sent = fake.requests_to("POST", INTENTS)[0].params
        assert sent["return_url"] == "https://app.example/pay/return"
        assert first.status == "requires_action"

        async with httpx.AsyncClient() as client:
            page = await client.get(first.next_action_url)
        assert page.status_code == 302
        assert page.headers["location"] == (
            f"https://app.example/pay/return?payment_intent={first.external_id}"
        )
        assert (await g.status(first.external_id)).status == "succeeded"


# ============================================================================ idempotency


async def test_the_same_key_twice_makes_one_payment_intent(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    request = charge_request()
    first = await gateway.charge(request)
    second = await gateway.charge(request)

    assert second == first
    assert len(fake.payment_intents) == 1
    attempts = fake.requests_to("POST", INTENTS)
    assert [r.replayed for r in attempts] == [False, True]
    assert {r.idempotency_key for r in attempts} == {request.idempotency_key}


async def test_a_replayed_decline_is_the_same_decline(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    request = charge_request(payment_method="pm_card_visa_chargeDeclined")
    with pytest.raises(StripeCardDeclinedError) as first:
        await gateway.charge(request)
    with pytest.raises(StripeCardDeclinedError) as second:
        await gateway.charge(request)
    assert second.value.payment_intent_id == first.value.payment_intent_id
    assert len(fake.payment_intents) == 1
    assert fake.requests[-1].replayed


async def test_the_same_key_with_another_amount_is_an_idempotency_error(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    request = charge_request()
    await gateway.charge(request)
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(
            charge_request(idempotency_key=request.idempotency_key, amount_cents=9)
        )

    assert (caught.value.code, caught.value.status) == ("idempotency_error", 400)
    assert "same parameters" in caught.value.message
    assert len(fake.payment_intents) == 1


async def test_a_server_error_is_retried_with_the_same_key(
    fake: FakeStripe, gateway: StripeGateway, sleeps: Sleeps
) -> None:
    fake.fail_next(1, status=500, path=INTENTS)
    request = charge_request()

    result = await gateway.charge(request)

    assert result.status == "succeeded"
    attempts = fake.requests_to("POST", INTENTS)
    assert [r.status for r in attempts] == [500, 200]
    assert {r.idempotency_key for r in attempts} == {request.idempotency_key}
    assert len(sleeps.delays) == 1
    assert len(fake.payment_intents) == 1


async def test_server_errors_past_the_retries_are_unavailable(
    fake: FakeStripe, gateway: StripeGateway, sleeps: Sleeps
) -> None:
    fake.fail_next(None, status=503)
    with pytest.raises(PaymentUnavailableError) as caught:
        await gateway.charge(charge_request())

    assert caught.value.retryable
    assert caught.value.status == 503
    assert len(fake.requests_to("POST", INTENTS)) == 3  # 1 + max_network_retries=2
    assert len(sleeps.delays) == 2
    assert fake.payment_intents == {}


async def test_a_rate_limit_is_unavailable_and_not_retried_by_the_library(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    fake.fail_next(1, status=429)
    with pytest.raises(PaymentUnavailableError) as caught:
        await gateway.charge(charge_request())
    assert (caught.value.status, caught.value.code) == (429, "rate_limit")
    assert len(fake.requests) == 1


async def test_a_lost_answer_is_recovered_by_the_library_retry(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    fake.drop_next(path=INTENTS)  # Stripe charged, the answer never arrived
    result = await gateway.charge(charge_request())

    assert result.status == "succeeded"
    first, second = fake.requests_to("POST", INTENTS)
    assert first.dropped
    assert second.replayed
    assert len(fake.payment_intents) == 1


async def test_a_lost_answer_without_retries_is_replayed_when_the_caller_retries(
    fake: FakeStripe, sleeps: Sleeps
) -> None:
    request = charge_request()
    async with gateway_with(fake, sleeps, max_network_retries=0) as g:
        fake.drop_next()
        with pytest.raises(PaymentUnavailableError) as caught:
            await g.charge(request)
        assert caught.value.retryable
        [made] = fake.payment_intents.values()
        assert made["status"] == "succeeded"  # charged although we never heard it

        again = await g.charge(request)  # e.g. after a restart, with the stored key

    assert again.external_id == made["id"]
    assert again.status == "succeeded"
    assert fake.requests[-1].replayed
    assert len(fake.payment_intents) == 1


async def test_a_concurrent_request_with_the_same_key_is_a_conflict(
    fake: FakeStripe, sleeps: Sleeps
) -> None:
    request = charge_request()
    async with gateway_with(fake, sleeps, max_network_retries=0) as g:
        fake.delay_next(0.3, path=INTENTS)
        outcomes = await asyncio.gather(
            g.charge(request), g.charge(request), return_exceptions=True
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        [conflict] = errors
        assert isinstance(conflict, PaymentUnavailableError)
        assert (conflict.status, conflict.code) == (409, "idempotency_key_in_use")

        later = await g.charge(request)
    [done] = [o for o in outcomes if not isinstance(o, BaseException)]
    assert later == done
    assert len(fake.payment_intents) == 1


async def test_the_library_retries_a_conflict_until_the_first_answer_is_saved(
    fake: FakeStripe, sleeps: Sleeps
) -> None:
    async def slow_sleep(seconds: float) -> None:
        sleeps.delays.append(seconds)
        await asyncio.sleep(0.2)

    request = charge_request()
    g = StripeGateway(
        KEY,
        api_base=fake.url,
        max_network_retries=3,
        http_client=StripeHttpClient(5.0, sleep=slow_sleep),
    )
    try:
        fake.delay_next(0.3, path=INTENTS)
        first, second = await asyncio.gather(g.charge(request), g.charge(request))
    finally:
        await g.aclose()
    assert first == second
    assert len(fake.payment_intents) == 1
    statuses = [r.status for r in fake.requests_to("POST", INTENTS)]
    assert 409 in statuses
    assert fake.requests[-1].replayed


# ============================================================================ errors


async def test_a_wrong_key_is_an_auth_error_and_is_not_retried(
    fake: FakeStripe, sleeps: Sleeps
) -> None:
    wrong = "sk_test_wrong_key_0123456789abcdef"
    async with gateway_with(fake, sleeps, secret_key=wrong) as g:
        with pytest.raises(PaymentAuthError) as caught:
            await g.charge(charge_request())
    assert caught.value.status == 401
    assert "Invalid API Key provided" in caught.value.message
    assert wrong not in str(caught.value)  # Stripe masks the key
    assert len(fake.requests) == 1
    assert sleeps.delays == []


async def test_status_of_an_unknown_intent_is_resource_missing(gateway: StripeGateway) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.status("pi_3doesnotexist000000000")
    assert (caught.value.code, caught.value.status) == ("resource_missing", 404)


@pytest.mark.parametrize(
    "method", ["4242424242424242", "4242 4242 4242 4242", "pm_4242424242424242", ""]
)
async def test_a_card_number_is_refused_before_any_request(
    fake: FakeStripe, gateway: StripeGateway, method: str
) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(charge_request(payment_method=method))
    assert "4242" not in str(caught.value)
    assert fake.requests == []


async def test_bad_amounts_and_currencies_are_refused_locally(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    for bad in (charge_request(amount_cents=0), charge_request(currency="USD")):
        with pytest.raises(InvalidPaymentRequestError):
            await gateway.charge(bad)
    assert fake.requests == []


async def test_stripe_minimum_amount_is_an_invalid_request(gateway: StripeGateway) -> None:
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.charge(charge_request(amount_cents=49))
    assert (caught.value.code, caught.value.status) == ("amount_too_small", 400)


# ============================================================================ refunds


async def test_refunds_partial_then_the_rest_then_nothing_left(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    paid = await gateway.charge(charge_request(amount_cents=5000))

    part = await gateway.refund(paid.external_id, 1500, idempotency_key="refund-1")
    assert (part.status, part.amount_cents) == ("succeeded", 1500)
    assert part.external_id.startswith("re_")

    with pytest.raises(InvalidPaymentRequestError) as too_much:
        await gateway.refund(paid.external_id, 3501, idempotency_key="refund-2")
    assert too_much.value.status == 400
    assert "greater than unrefunded amount" in too_much.value.message

    rest = await gateway.refund(paid.external_id, 3500, idempotency_key="refund-3")
    assert rest.amount_cents == 3500
    assert fake.charges[paid.charge_id]["refunded"] is True

    with pytest.raises(InvalidPaymentRequestError) as again:
        await gateway.refund(paid.external_id, 1, idempotency_key="refund-4")
    assert again.value.code == "charge_already_refunded"

    sent = fake.requests_to("POST", "/v1/refunds")[0]
    assert sent.params == {"payment_intent": paid.external_id, "amount": "1500"}
    assert sent.idempotency_key == "refund-1"


async def test_a_full_refund_is_idempotent(fake: FakeStripe, gateway: StripeGateway) -> None:
    paid = await gateway.charge(charge_request())
    first = await gateway.refund(paid.external_id, 2500, idempotency_key="refund-full")
    second = await gateway.refund(paid.external_id, 2500, idempotency_key="refund-full")

    assert second == first
    assert len(fake.refunds) == 1
    assert fake.requests[-1].replayed


async def test_a_declined_payment_cannot_be_refunded(gateway: StripeGateway) -> None:
    with pytest.raises(StripeCardDeclinedError) as declined:
        await gateway.charge(charge_request(payment_method="pm_card_visa_chargeDeclined"))
    with pytest.raises(InvalidPaymentRequestError) as caught:
        await gateway.refund(declined.value.payment_intent_id, 100, idempotency_key="r")
    assert "does not have a successful charge" in caught.value.message


# ============================================================================ webhooks


def signed(fake: FakeStripe, event: dict[str, Any], t: int | None = None) -> tuple[bytes, str]:
    payload = fake.event_payload(event)
    return payload, fake.sign(payload, t)


async def test_a_signed_event_is_verified_and_reduced(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    paid = await gateway.charge(charge_request(payment_id="pay_9", user_id="usr_9"))
    [event] = [
        e for e in fake.events_for(paid.external_id) if e["type"] == "payment_intent.succeeded"
    ]
    payload, header = signed(fake, event)

    parsed = gateway.parse_webhook(payload, header)

    assert parsed.event_id == event["id"]
    assert parsed.type == "payment_intent.succeeded"
    assert parsed.payment_intent_id == paid.external_id
    assert parsed.amount_cents == 2500
    assert parsed.created == event["created"]
    assert parsed.metadata == {"payment_id": "pay_9", "user_id": "usr_9"}
    assert parsed.failure_message == ""


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "stale", "missing", "empty", "junk"])
async def test_a_bad_signature_is_refused(
    fake: FakeStripe, gateway: StripeGateway, case: str
) -> None:
    event = fake.make_event("payment_intent.succeeded", {"id": "pi_3x", "object": "payment_intent"})
    payload, header = signed(fake, event)
    header_or_none: str | None = header
    if case == "tampered":
        payload = payload.replace(b"pi_3x", b"pi_3y")
    elif case == "wrong_secret":
        header_or_none = fake.sign(payload, secret="whsec_someone_else")
    elif case == "stale":
        header_or_none = fake.sign(payload, int(time.time()) - 301)
    elif case == "missing":
        header_or_none = None
    elif case == "empty":
        header_or_none = ""
    else:
        header_or_none = "not a signature"

    with pytest.raises(InvalidWebhookError):
        gateway.parse_webhook(payload, header_or_none)


async def test_tolerance_and_bodies_that_are_not_events(
    fake: FakeStripe, gateway: StripeGateway, sleeps: Sleeps
) -> None:
    event = fake.make_event("charge.refunded", {"id": "ch_3x", "object": "charge"})
    payload = fake.event_payload(event)
    old = fake.sign(payload, int(time.time()) - 100)
    assert gateway.parse_webhook(payload, old).type == "charge.refunded"  # within 300 s
    with pytest.raises(InvalidWebhookError):
        gateway.parse_webhook(payload, old, tolerance=60)

    for body in (b"not json", b"[1, 2]", json.dumps({"id": "evt_1"}).encode()):
        with pytest.raises(InvalidWebhookError):
            gateway.parse_webhook(body, fake.sign(body))
    with pytest.raises(InvalidWebhookError):  # not UTF-8
        gateway.parse_webhook(b"\xff\xfe", fake.sign("\xff\xfe"))

    async with gateway_with(fake, sleeps, webhook_secret="") as no_secret:
        with pytest.raises(InvalidWebhookError):
            no_secret.parse_webhook(payload, fake.sign(payload))


async def test_payment_failed_event_carries_the_failure(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    with pytest.raises(StripeCardDeclinedError) as declined:
        await gateway.charge(charge_request(payment_method="pm_card_visa_chargeDeclined"))
    intent_id = declined.value.payment_intent_id
    [event] = [
        e for e in fake.events_for(intent_id) if e["type"] == "payment_intent.payment_failed"
    ]

    parsed = gateway.parse_webhook(*signed(fake, event))

    assert parsed.type == "payment_intent.payment_failed"
    assert parsed.payment_intent_id == intent_id
    assert parsed.amount_cents == 2500
    assert parsed.failure_message == "Your card was declined."
    assert (parsed.card_brand, parsed.card_last4) == ("visa", "0002")


async def test_charge_refunded_event_is_the_refunded_total(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    paid = await gateway.charge(charge_request(amount_cents=5000))
    await gateway.refund(paid.external_id, 1000, idempotency_key="r1")
    await gateway.refund(paid.external_id, 1500, idempotency_key="r2")
    refunded = [e for e in fake.events_for(paid.external_id) if e["type"] == "charge.refunded"]

    first, second = (gateway.parse_webhook(*signed(fake, e)) for e in refunded)

    assert (first.amount_cents, second.amount_cents) == (1000, 2500)  # Stripe's running total
    assert second.payment_intent_id == paid.external_id
    assert (second.card_brand, second.card_last4) == ("visa", "4242")
    assert second.metadata["payment_id"] == "pay_0001"


async def test_dispute_created_event_is_the_disputed_amount(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    paid = await gateway.charge(charge_request())
    answer = await control(
        fake, "POST", "/_test/disputes", json={"charge": paid.charge_id, "amount": 2000}
    )
    assert answer.status_code == 200
    [event] = [
        e for e in fake.events_for(paid.external_id) if e["type"] == "charge.dispute.created"
    ]

    parsed = gateway.parse_webhook(*signed(fake, event))

    assert parsed.payment_intent_id == paid.external_id
    assert parsed.amount_cents == 2000
    assert event["data"]["object"]["charge"] == paid.charge_id


async def test_other_events_keep_their_id_and_type(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    paid = await gateway.charge(charge_request())
    await gateway.refund(paid.external_id, 100, idempotency_key="r")
    types = fake.event_types_for(paid.external_id)
    assert types == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
        "refund.created",
        "charge.refunded",
    ]
    [created] = [e for e in fake.events_for(paid.external_id) if e["type"] == "refund.created"]
    parsed = gateway.parse_webhook(*signed(fake, created))
    assert (parsed.event_id, parsed.type) == (created["id"], "refund.created")
    assert parsed.payment_intent_id == paid.external_id

    customer = fake.make_event("customer.created", {"id": "cus_1", "object": "customer"})
    parsed = gateway.parse_webhook(*signed(fake, customer))
    assert (parsed.type, parsed.payment_intent_id, parsed.amount_cents) == (
        "customer.created",
        "",
        0,
    )


class Receiver:
    """A tiny webhook endpoint on a loopback port: records each body and signature."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, str | None]] = []

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append((body, self.headers.get("Stripe-Signature")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/stripe"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


async def test_the_fake_sends_signed_webhooks_the_gateway_accepts(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    receiver = Receiver()
    with receiver.serve() as url:
        delivery = fake.send_webhook(
            url,
            "payment_intent.succeeded",
            {"id": "pi_3abc", "object": "payment_intent", "amount": 700, "amount_received": 700},
        )
    assert delivery.status == 200
    [(body, header)] = receiver.received
    assert header is not None
    assert header.startswith("t=")
    assert ",v1=" in header
    parsed = gateway.parse_webhook(body, header)
    assert (parsed.payment_intent_id, parsed.amount_cents) == ("pi_3abc", 700)
    assert parsed.event_id == delivery.event["id"]


async def test_the_fake_delivers_its_events_as_they_happen(sleeps: Sleeps) -> None:
    receiver = Receiver()
    with receiver.serve() as url, running_stripe(webhook_url=url) as fake:
        async with gateway_with(fake, sleeps) as g:
            paid = await g.charge(charge_request())
            deliveries = fake.wait_for_deliveries(3)
            parsed = [g.parse_webhook(body, header) for body, header in receiver.received]
    assert {d.status for d in deliveries} == {200}
    # Delivered concurrently: Stripe does not promise an order either.
    assert sorted(p.type for p in parsed) == [
        "charge.succeeded",
        "payment_intent.created",
        "payment_intent.succeeded",
    ]
    assert {p.payment_intent_id for p in parsed} == {paid.external_id}


# ======================================================================== test cards, keys, logs


async def test_test_card_numbers_map_to_test_payment_methods(gateway: StripeGateway) -> None:
    assert gateway.is_test_mode
    assert gateway.test_payment_method("4242424242424242") == "pm_card_visa"
    assert gateway.test_payment_method("4242 4242 4242 4242") == "pm_card_visa"
    assert gateway.test_payment_method("4000-0566-5566-5556") == "pm_card_visa_debit"
    assert gateway.test_payment_method("5555555555554444") == "pm_card_mastercard"
    assert gateway.test_payment_method("378282246310005") == "pm_card_amex"
    assert gateway.test_payment_method("4000000000000002") == "pm_card_visa_chargeDeclined"
    assert (
        gateway.test_payment_method("4000000000009995")
        == "pm_card_visa_chargeDeclinedInsufficientFunds"
    )
    assert (
        gateway.test_payment_method("4000002500003155") == "pm_card_authenticationRequiredOnSetup"
    )
    assert gateway.test_payment_method("4000002760003184") == "pm_card_authenticationRequired"
    assert gateway.test_payment_method("4000000000003220") == "pm_card_threeDSecure2Required"
    assert gateway.test_payment_method("4111111111111112") is None
    assert gateway.test_payment_method("pm_card_visa") is None


async def test_every_mapped_test_card_charges_as_documented(
    fake: FakeStripe, gateway: StripeGateway
) -> None:
    outcomes: dict[str, str] = {}
    for number, token in TEST_PAYMENT_METHODS.items():
        try:
            result = await gateway.charge(charge_request(payment_method=token))
            outcomes[number] = result.status
            assert result.card_last4 == number[-4:]
        except CardDeclinedError as exc:
            outcomes[number] = f"declined:{exc.code}"
    assert outcomes["4242424242424242"] == "succeeded"
    assert outcomes["4000000000000002"] == "declined:card_declined"
    assert outcomes["4000000000000069"] == "declined:expired_card"
    assert outcomes["4000002760003184"] == "requires_action"
    assert_no_card_number_sent(fake)


async def test_live_keys_never_map_test_cards(fake: FakeStripe, sleeps: Sleeps) -> None:
    async with gateway_with(fake, sleeps, secret_key="sk_live_0123456789") as live:
        assert not live.is_test_mode
        assert live.test_payment_method("4242424242424242") is None
    async with gateway_with(fake, sleeps, secret_key="rk_test_0123456789") as restricted:
        assert restricted.is_test_mode
        assert restricted.name == "stripe"


async def test_no_request_body_is_logged_and_the_key_is_not_in_the_repr(
    fake: FakeStripe, gateway: StripeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="stripe")
    await gateway.charge(charge_request(payment_id="pay_secretish"))

    logged = caplog.text
    assert "Request to Stripe api" in logged  # the library does log, at debug/info
    assert "pay_secretish" not in logged  # neither the request body nor the answer's
    assert "payment_method=" not in logged
    assert "client_secret" not in logged
    assert KEY not in repr(gateway)


# ============================================================================ the fake itself


async def test_the_fake_refuses_what_stripe_refuses(fake: FakeStripe) -> None:
    headers = {"Authorization": f"Bearer {KEY}", "Stripe-Version": API_VERSION}
    base = {"amount": "1000", "currency": "usd", "payment_method": "pm_card_visa"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers) as client:
        old_style = await client.post(
            INTENTS, data={**base, "confirm": "true", "payment_method_types[0]": "card"}
        )
        no_return_url = await client.post(INTENTS, data={**base, "confirm": "true"})
        unknown = await client.post(INTENTS, data={**base, "card[number]": "4242424242424242"})
        no_key = await client.get(f"{INTENTS}/pi_3x", headers={"Authorization": ""})
    assert old_style.status_code == 400
    assert old_style.json()["error"]["code"] == "payment_method_types_no_longer_supported"
    assert no_return_url.status_code == 400
    assert "return_url" in no_return_url.json()["error"]["message"]
    assert unknown.json()["error"]["code"] == "parameter_unknown"
    assert no_key.status_code == 401
    assert no_key.json()["error"]["type"] == "invalid_request_error"
    assert fake.payment_intents == {}


async def test_the_test_control_api(fake: FakeStripe, gateway: StripeGateway) -> None:
    answer = await control(
        fake, "POST", "/_test/failures", json={"kind": "status", "status": 500, "count": 3}
    )
    assert answer.status_code == 200
    with pytest.raises(PaymentUnavailableError):
        await gateway.charge(charge_request())

    paid = await gateway.charge(charge_request())
    requests = (await control(fake, "GET", "/_test/requests")).json()
    assert [r["status"] for r in requests] == [500, 500, 500, 200]
    assert all(r["headers"]["idempotency-key"] for r in requests)
    events = (
        await control(fake, "GET", "/_test/events", params={"payment_intent": paid.external_id})
    ).json()
    assert events[-1]["type"] == "payment_intent.succeeded"
    listed = await control(
        fake, "GET", "/v1/events", headers={"Authorization": f"Bearer {KEY}"}, params={"limit": 2}
    )
    assert [e["type"] for e in listed.json()["data"]] == [
        "payment_intent.succeeded",
        "charge.succeeded",
    ]
