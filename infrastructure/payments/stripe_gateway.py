"""The Stripe card processor (``domain.ports.payments.CardProcessor`` on the official library).

Calls go through ``stripe.StripeClient``'s async methods on ``StripeHttpClient`` (httpx):

- charge: ``POST /v1/payment_intents`` with ``confirm=true``,
  ``automatic_payment_methods[enabled]=true`` and ``[allow_redirects]=never`` (so a server-side
  confirm needs no ``return_url``; 3-D Secure still answers ``requires_action``. The library
  pins API version 2026-10-28.endive, which refuses ``payment_method_types`` with
  ``payment_method_types_no_longer_supported``), ``metadata[payment_id]`` and
  ``metadata[user_id]``, ``expand[]`` of ``latest_charge`` and ``payment_method``, and our key
  as the ``Idempotency-Key``: Stripe replays its first answer for a key, so a charge retried
  after a lost answer is made once;
- status: ``GET /v1/payment_intents/{id}`` with the same expansions;
- refund: ``POST /v1/refunds`` with ``payment_intent`` and ``amount``, idempotent too.

PaymentIntent statuses: ``succeeded`` → succeeded; ``processing`` and ``requires_capture`` →
pending; ``requires_action`` / ``requires_confirmation`` → requires_action (``next_action_url``:
``redirect_to_url.url``, else ``use_stripe_sdk.stripe_js``); ``requires_payment_method`` and
``canceled`` → failed, with ``last_payment_error``'s ``code`` and ``message``.

Errors: a declined card (402 ``card_error``) raises ``StripeCardDeclinedError`` (a
``CardDeclinedError`` that keeps the PaymentIntent id and ``decline_code``);
``invalid_request_error`` → ``InvalidPaymentRequestError`` (``idempotency_error`` with code
``idempotency_error``); 401/403 → ``PaymentAuthError``; 429, 409, 5xx and network errors (after
the library's ``max_network_retries``, which keep the idempotency key) →
``PaymentUnavailableError``.

No card number ever reaches Stripe or a log: ``payment_method`` must be a token, a value holding
a long digit run is refused before any request, and the library's debug records of request and
response bodies are dropped from the ``stripe`` logger (``stripe.log`` / ``STRIPE_LOG`` set to
``debug`` would still print them to stderr: leave them unset). The secret key is never in a
``repr``. ``test_payment_method`` turns Stripe's documented test card numbers into their test
PaymentMethod tokens, with a test key only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx
import stripe

from domain.ports.payments import (
    CardDeclinedError,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    InvalidPaymentRequestError,
    InvalidWebhookError,
    PaymentAuthError,
    PaymentError,
    PaymentUnavailableError,
    RefundResult,
    WebhookEvent,
)

if TYPE_CHECKING:
    from stripe.params import PaymentIntentCreateParams

    from domain.ports.payments import CardProcessor

PROCESSOR: Final = "stripe"
DEFAULT_API_BASE: Final = "https://api.stripe.com"
DEFAULT_TIMEOUT_S: Final = 30.0
WEBHOOK_TOLERANCE_S: Final = 300
EXPAND: Final = ("latest_charge", "payment_method")

# Stripe's documented test card numbers → their test PaymentMethod tokens (docs.stripe.com/testing).
TEST_PAYMENT_METHODS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "4242424242424242": "pm_card_visa",
        "4000056655665556": "pm_card_visa_debit",
        "5555555555554444": "pm_card_mastercard",
        "378282246310005": "pm_card_amex",
        "4000000000000002": "pm_card_visa_chargeDeclined",
        "4000000000009995": "pm_card_visa_chargeDeclinedInsufficientFunds",
        "4000000000009987": "pm_card_visa_chargeDeclinedLostCard",
        "4000000000009979": "pm_card_visa_chargeDeclinedStolenCard",
        "4000000000000069": "pm_card_chargeDeclinedExpiredCard",
        "4000000000000127": "pm_card_chargeDeclinedIncorrectCvc",
        "4000000000000119": "pm_card_chargeDeclinedProcessingError",
        "4000002500003155": "pm_card_authenticationRequiredOnSetup",
        "4000002760003184": "pm_card_authenticationRequired",
        "4000000000003220": "pm_card_threeDSecure2Required",
    }
)

_TEST_KEY_PREFIXES: Final = ("sk_test_", "rk_test_")
_TOKEN = re.compile(r"(?:pm|card|src)_[A-Za-z0-9_]{1,250}")
_INTENT_ID = re.compile(r"pi_[A-Za-z0-9_]{1,250}")
_CURRENCY = re.compile(r"[a-z]{3}")
_DIGIT_RUN = re.compile(r"[0-9][0-9 -]{10,}[0-9]")
_MAX_IDEMPOTENCY_KEY = 255
_DROPPED_LOG_MESSAGES: Final = ("Post details", "API response body")

_STATUSES: Final[Mapping[str, ChargeStatus]] = MappingProxyType(
    {
        "succeeded": "succeeded",
        "processing": "pending",
        "requires_capture": "pending",
        "requires_action": "requires_action",
        "requires_confirmation": "requires_action",
        "requires_payment_method": "failed",
        "canceled": "failed",
    }
)

# Refund statuses: ``requires_action`` and ``pending`` stay pending until a webhook says more.
_REFUND_STATUSES: Final[Mapping[str, Literal["succeeded", "pending", "failed"]]] = MappingProxyType(
    {"succeeded": "succeeded", "failed": "failed", "canceled": "failed"}
)


class StripeCardDeclinedError(CardDeclinedError):
    """A 402 ``card_error``; ``payment_intent_id`` is the PaymentIntent Stripe left failed."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        decline_code: str = "",
        payment_intent_id: str = "",
        charge_id: str = "",
    ) -> None:
        super().__init__(PROCESSOR, message, code=code, status=402)
        self.decline_code = decline_code
        self.payment_intent_id = payment_intent_id
        self.charge_id = charge_id


class StripeHttpClient(stripe.HTTPClient):
    """The library's transport on one ``httpx.AsyncClient``, async only.

    ``stripe.HTTPXClient`` hands the form body to httpx as ``data=<str>``, which httpx 0.28
    deprecates (a ``DeprecationWarning`` on every POST); this one sends it as ``content=``.
    Network errors become ``stripe.APIConnectionError(should_retry=True)``, so the library
    retries them (with the same idempotency key). ``sleep`` is the backoff sleep;
    ``transport`` an httpx transport for tests.
    """

    name = "httpx-async"

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__()
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            timeout=timeout_s,
            transport=transport,
            verify=ssl.create_default_context(cafile=stripe.ca_bundle_path),
            follow_redirects=False,
        )

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        try:
            response = await self._client.request(
                method, url, headers=dict(headers), content=post_data or None
            )
        except (httpx.HTTPError, OSError) as exc:
            raise stripe.APIConnectionError(  # type: ignore[no-untyped-call]
                f"Network error talking to Stripe: {type(exc).__name__}", should_retry=True
            ) from exc
        return response.content, response.status_code, response.headers

    def sleep_async(self, secs: float) -> Awaitable[None]:
        return self._sleep(secs)

    async def close_async(self) -> None:
        await self._client.aclose()

    def close(self) -> None:
        """Nothing to close synchronously (``close_async`` closes the client)."""


def _drop_bodies(record: logging.LogRecord) -> bool:
    """A ``stripe`` logger filter: the library's debug records carry whole request bodies."""
    message = str(record.msg)
    return not any(marker in message for marker in _DROPPED_LOG_MESSAGES)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _reference(value: object) -> str:
    """An expandable field: the id, whether Stripe sent the object or only its id."""
    return _text(value) or _text(_dict(value).get("id"))


def _metadata(value: object) -> dict[str, str]:
    return {str(k): str(v) for k, v in _dict(value).items() if v is not None}


def _card(*sources: object) -> tuple[str, str]:
    """``(brand, last4)`` from the first charge or PaymentMethod among ``sources`` that has it."""
    for source in sources:
        data = _dict(source)
        card = _dict(_dict(data.get("payment_method_details")).get("card")) or _dict(
            data.get("card")
        )
        if card.get("last4"):
            return _text(card.get("brand")), _text(card.get("last4"))
    return "", ""


def _next_action_url(next_action: object) -> str:
    action = _dict(next_action)
    return _text(_dict(action.get("redirect_to_url")).get("url")) or _text(
        _dict(action.get("use_stripe_sdk")).get("stripe_js")
    )


def charge_result(intent: Mapping[str, Any]) -> ChargeResult:
    """A PaymentIntent (as a dict, expansions optional) → ``ChargeResult``."""
    raw_status = _text(intent.get("status"))
    status = _STATUSES.get(raw_status, "pending")
    error = _dict(intent.get("last_payment_error"))
    failure_code = failure_message = ""
    if status == "failed":
        failure_code = _text(error.get("code")) or _text(intent.get("cancellation_reason"))
        failure_message = _text(error.get("message"))
        if raw_status == "canceled" and not failure_code:
            failure_code = "canceled"
    brand, last4 = _card(
        intent.get("latest_charge"), intent.get("payment_method"), error.get("payment_method")
    )
    return ChargeResult(
        external_id=_text(intent.get("id")),
        status=status,
        amount_cents=_int(intent.get("amount")),
        currency=_text(intent.get("currency")),
        failure_code=failure_code,
        failure_message=failure_message,
        card_brand=brand,
        card_last4=last4,
        next_action_url=_next_action_url(intent.get("next_action"))
        if status == "requires_action"
        else "",
        charge_id=_reference(intent.get("latest_charge")),
    )


def payment_error(exc: stripe.StripeError) -> PaymentError:
    """A library error → the port's ``PaymentError`` (Stripe's message, never request data)."""
    status = exc.http_status or 0
    message = str(exc.user_message or type(exc).__name__)
    error = _dict(_dict(exc.json_body).get("error"))
    code = str(exc.code or "") or _text(error.get("code"))
    if isinstance(exc, stripe.CardError):
        return StripeCardDeclinedError(
            message,
            code=code or "card_declined",
            decline_code=_text(error.get("decline_code")),
            payment_intent_id=_reference(error.get("payment_intent")),
            charge_id=_text(error.get("charge")),
        )
    if isinstance(exc, stripe.IdempotencyError):
        return InvalidPaymentRequestError(
            PROCESSOR, message, code="idempotency_error", status=status
        )
    if isinstance(exc, stripe.InvalidRequestError):
        return InvalidPaymentRequestError(PROCESSOR, message, code=code, status=status)
    if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
        return PaymentAuthError(PROCESSOR, message, code=code, status=status)
    # RateLimitError, APIConnectionError, APIError (5xx, 409, unreadable answers) and the rest.
    return PaymentUnavailableError(PROCESSOR, message, code=code, status=status)


def webhook_event(event: Mapping[str, Any]) -> WebhookEvent:
    """A Stripe Event (already verified) → ``WebhookEvent``.

    ``payment_intent.*``: the PaymentIntent itself (amount: ``amount_received``, else
    ``amount``); ``charge.refunded``: the Charge (amount: ``amount_refunded``, the running
    total); ``charge.dispute.created``: the Dispute (amount: the disputed ``amount``). Any other
    type keeps its id and type and whatever PaymentIntent id its object names.
    """
    event_type = _text(event.get("type"))
    obj = _dict(_dict(event.get("data")).get("object"))
    object_kind = _text(obj.get("object"))
    intent_id = (
        _text(obj.get("id"))
        if object_kind == "payment_intent"
        else _reference(obj.get("payment_intent"))
    )
    amount = 0
    failure = ""
    brand, last4 = "", ""
    if object_kind == "payment_intent":
        amount = _int(obj.get("amount_received")) or _int(obj.get("amount"))
        error = _dict(obj.get("last_payment_error"))
        failure = _text(error.get("message"))
        brand, last4 = _card(
            obj.get("latest_charge"), obj.get("payment_method"), error.get("payment_method")
        )
    elif event_type == "charge.refunded":
        amount = _int(obj.get("amount_refunded"))
        brand, last4 = _card(obj)
    elif event_type.startswith("charge.dispute."):
        amount = _int(obj.get("amount"))
    elif object_kind == "charge":
        amount = _int(obj.get("amount"))
        failure = _text(obj.get("failure_message"))
        brand, last4 = _card(obj)
    return WebhookEvent(
        event_id=_text(event.get("id")),
        type=event_type,
        payment_intent_id=intent_id,
        amount_cents=amount,
        failure_message=failure,
        card_brand=brand,
        card_last4=last4,
        created=_int(event.get("created")),
        metadata=_metadata(obj.get("metadata")),
    )


class StripeGateway:
    """``CardProcessor`` for Stripe (PaymentIntents), async, on ``stripe.StripeClient``.

    ``http_client``: the library HTTP client to use (default ``StripeHttpClient``); the gateway
    closes it in ``aclose``. ``return_url``: sent with each charge, so 3-D Secure answers with a
    ``redirect_to_url`` page instead of a Stripe.js action.
    """

    def __init__(
        self,
        secret_key: str,
        *,
        webhook_secret: str = "",
        api_base: str = DEFAULT_API_BASE,
        max_network_retries: int = 2,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        return_url: str = "",
        http_client: StripeHttpClient | None = None,
    ) -> None:
        if not secret_key:
            raise ValueError("a Stripe secret key is required")
        if max_network_retries < 0:
            raise ValueError("max_network_retries must be >= 0")
        self._test_mode = secret_key.startswith(_TEST_KEY_PREFIXES)
        self._webhook_secret = webhook_secret
        self._return_url = return_url
        self._api_base = api_base.rstrip("/")
        self._http = http_client if http_client is not None else StripeHttpClient(timeout_s)
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": self._api_base},
            max_network_retries=max_network_retries,
            http_client=self._http,
        )
        self._closed = False
        logging.getLogger("stripe").addFilter(_drop_bodies)

    def __repr__(self) -> str:
        return f"StripeGateway(api_base={self._api_base!r}, test_mode={self._test_mode})"

    @property
    def name(self) -> str:
        return PROCESSOR

    @property
    def is_test_mode(self) -> bool:
        """A test key (``sk_test_`` / ``rk_test_``): only then do test card numbers mean a thing."""
        return self._test_mode

    def test_payment_method(self, card_number: str) -> str | None:
        """A documented Stripe test card number → its test PaymentMethod token.

        ``None`` for any other number, and for every number with a live key. Spaces and dashes
        are ignored; the number is neither kept nor logged.
        """
        if not self._test_mode or not re.fullmatch(r"[0-9 -]{12,30}", card_number):
            return None
        return TEST_PAYMENT_METHODS.get(card_number.replace(" ", "").replace("-", ""))

    # ------------------------------------------------------------------------ CardProcessor

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        _check_charge(request)
        params: PaymentIntentCreateParams = {
            "amount": request.amount_cents,
            "currency": request.currency,
            "payment_method": request.payment_method,
            "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
            "confirm": True,
            "metadata": {"payment_id": request.payment_id, "user_id": request.user_id},
            "expand": list(EXPAND),
        }
        if request.description:
            params["description"] = request.description
        if self._return_url:
            params["return_url"] = self._return_url
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params, {"idempotency_key": request.idempotency_key}
            )
        except stripe.StripeError as exc:
            raise payment_error(exc) from exc
        return charge_result(intent.to_dict())

    async def status(self, external_id: str) -> ChargeResult:
        if not _INTENT_ID.fullmatch(external_id):
            raise InvalidPaymentRequestError(PROCESSOR, "not a PaymentIntent id", code="invalid")
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(
                external_id, {"expand": list(EXPAND)}
            )
        except stripe.StripeError as exc:
            raise payment_error(exc) from exc
        return charge_result(intent.to_dict())

    async def refund(
        self, external_id: str, amount_cents: int, *, idempotency_key: str
    ) -> RefundResult:
        if not _INTENT_ID.fullmatch(external_id):
            raise InvalidPaymentRequestError(PROCESSOR, "not a PaymentIntent id", code="invalid")
        if isinstance(amount_cents, bool) or not isinstance(amount_cents, int) or amount_cents <= 0:
            raise InvalidPaymentRequestError(PROCESSOR, "refund amount must be > 0", code="amount")
        _check_idempotency_key(idempotency_key)
        try:
            refund = await self._client.v1.refunds.create_async(
                {"payment_intent": external_id, "amount": amount_cents},
                {"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            raise payment_error(exc) from exc
        data = refund.to_dict()
        return RefundResult(
            external_id=_text(data.get("id")),
            status=_REFUND_STATUSES.get(_text(data.get("status")), "pending"),
            amount_cents=_int(data.get("amount")),
        )

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._http.close_async()

    # ------------------------------------------------------------------------ webhooks

    def parse_webhook(
        self, payload: bytes, signature_header: str | None, *, tolerance: int = WEBHOOK_TOLERANCE_S
    ) -> WebhookEvent:
        """Verify a ``Stripe-Signature`` (HMAC-SHA256 of ``"{t}.{body}"``, ``t`` within
        ``tolerance`` seconds) with ``webhook_secret``, then reduce the event.

        Anything wrong (no secret, no or bad header, wrong signature, stale timestamp, a body
        that is not UTF-8 JSON for an event) raises ``InvalidWebhookError``.
        """
        if not self._webhook_secret:
            raise InvalidWebhookError("no Stripe webhook secret is configured")
        if not signature_header:
            raise InvalidWebhookError("missing Stripe-Signature header")
        try:
            stripe.WebhookSignature.verify_header(
                payload, signature_header, self._webhook_secret, tolerance
            )
        except stripe.SignatureVerificationError as exc:
            raise InvalidWebhookError(f"bad Stripe-Signature: {exc.user_message}") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidWebhookError("unreadable webhook body") from exc
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise InvalidWebhookError("webhook body is not JSON") from exc
        if (
            not isinstance(event, dict)
            or event.get("object") != "event"
            or not _text(event.get("id"))
            or not _text(event.get("type"))
        ):
            raise InvalidWebhookError("webhook body is not a Stripe event")
        return webhook_event(event)


def _check_idempotency_key(key: str) -> None:
    if not key or len(key) > _MAX_IDEMPOTENCY_KEY:
        raise InvalidPaymentRequestError(
            PROCESSOR, "an idempotency key of 1 to 255 characters is required", code="idempotency"
        )


def _check_charge(request: ChargeRequest) -> None:
    """Refuse what Stripe would refuse, and anything that might carry a card number."""
    method = request.payment_method
    if not _TOKEN.fullmatch(method) or _DIGIT_RUN.search(method):
        # Never echo the value: it might be a card number.
        raise InvalidPaymentRequestError(
            PROCESSOR, "payment_method must be a Stripe PaymentMethod token", code="payment_method"
        )
    amount = request.amount_cents
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidPaymentRequestError(PROCESSOR, "amount must be > 0 cents", code="amount")
    if not _CURRENCY.fullmatch(request.currency):
        raise InvalidPaymentRequestError(
            PROCESSOR, "currency must be a lower-case ISO code", code="currency"
        )
    _check_idempotency_key(request.idempotency_key)


if TYPE_CHECKING:

    def _conforms(gateway: StripeGateway) -> CardProcessor:
        return gateway
