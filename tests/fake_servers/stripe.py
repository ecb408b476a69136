"""A fake Stripe API that follows what the official ``stripe`` library sends and reads.

``FakeStripe`` is a real HTTP/1.1 server on a loopback port (asyncio streams in a thread, so a
test can drop a connection at will): ``with running_stripe() as fake:`` then point the adapter
at ``fake.url``. Requests are form-encoded with Stripe's nested keys (``metadata[payment_id]``,
``expand[0]``, ``payment_method_types[]``); answers are Stripe's JSON objects and error objects
``{"error": {"type", "code", "decline_code", "message", "param", ...}}`` with Stripe's status
codes (400, 401, 402 card errors, 404 ``resource_missing``, 409, 429, 5xx). Every API request is
recorded in ``fake.requests`` with the status sent back.

Auth: ``Authorization: Bearer <secret key>`` (or Basic with the key as user name); anything else
is 401 ``invalid_request_error`` "Invalid API Key provided: sk_test_****…" (or "You did not
provide an API key").

Routes:

- ``POST /v1/payment_intents``: ``amount`` (≥ the currency minimum, ≤ 99999999), ``currency``,
  ``payment_method``, ``confirm``, ``metadata``, ``description``, ``return_url``, ``expand``,
  ``automatic_payment_methods``, ``allowed_payment_method_types``, ``payment_method_types``
  (refused with ``payment_method_types_no_longer_supported`` from API version 2026-09-30, the
  library's pinned one included), ``error_on_requires_action``, ``customer``,
  ``receipt_email``, ``statement_descriptor_suffix``; other names are ``parameter_unknown``.
  Confirming without a ``return_url`` while redirect-based methods are possible is a 400, as
  on Stripe (``automatic_payment_methods[allow_redirects]=never`` or cards only avoid it).
  ``payment_method`` is a test token (``TEST_CARDS``: each use makes a new ``pm_…``) or an id
  the fake made; anything else is 400 ``resource_missing`` (param ``payment_method``).
  Outcomes: a good card → ``succeeded`` with ``latest_charge`` ``ch_…`` whose
  ``payment_method_details.card`` has ``brand``/``last4``; a declining card → 402
  ``card_error`` (``code``, ``decline_code``, ``payment_intent``, ``payment_method``,
  ``charge``) and the PaymentIntent left ``requires_payment_method`` with
  ``last_payment_error``; a 3-D Secure card → ``requires_action`` with ``next_action``
  (``redirect_to_url`` when a ``return_url`` was given, else ``use_stripe_sdk``).
- ``GET /v1/payment_intents/{id}``, ``POST /v1/payment_intents/{id}/confirm`` and ``/cancel``;
  ``expand[]`` of ``latest_charge`` and ``payment_method``.
- ``POST /v1/refunds`` (``payment_intent`` or ``charge``, ``amount`` ≤ what is left, ``reason``,
  ``metadata``): 400 ``charge_already_refunded`` once nothing is left, 400 (param ``amount``)
  "Refund amount ($x) is greater than unrefunded amount on charge ($y)".
- ``GET /v1/refunds/{id}``, ``GET /v1/charges/{id}``, ``GET /v1/events`` (newest first,
  ``type``, ``limit``), ``GET /v1/events/{id}``.

Idempotency (``Idempotency-Key`` on POST, as Stripe documents it): the first answer whose
endpoint began executing (200, and 402 card errors) is saved; the same key with the same
endpoint and parameters gets it back byte for byte, same status, with ``Idempotent-Replayed:
true`` and ``Original-Request``; the same key with other parameters (or another endpoint) is 400
``idempotency_error``; the same key while its first request is still running is 409
``idempotency_key_in_use``. Validation failures, 401s, injected failures and conflicts are not
saved, so they may be retried.

Fault injection (``fail_next``, ``drop_next``, ``delay_next``; each takes ``method`` and
``path`` (a prefix) to aim, and ``count=None`` for "forever"): an answer (500 ``api_error``, 429
``rate_limit``, …) given before any processing; a connection dropped before processing, or
after it (the PaymentIntent exists and the idempotent answer is saved, but the caller never
hears it: "Stripe charged, we crashed"); a delay inside processing (the key stays in flight).

Webhooks: every state change records a Stripe Event (``payment_intent.created``,
``payment_intent.requires_action``, ``payment_intent.succeeded``,
``payment_intent.payment_failed``, ``payment_intent.canceled``, ``charge.succeeded``,
``charge.failed``, ``charge.refunded``, ``refund.created``, ``charge.dispute.created``); see
``events``/``events_for``. ``sign`` makes a ``Stripe-Signature`` (``t=…,v1=HMAC-SHA256(secret,
"{t}.{payload}")``), ``deliver``/``send_webhook`` POST a signed event to a URL, and with
``webhook_url`` set every new event is delivered there as it happens (``deliveries``).

Test-control API (not Stripe's, no auth, JSON): ``GET /_test/requests``, ``POST
/_test/failures`` (``{"kind": "status"|"drop_before"|"drop_after"|"delay", "count", "status",
"delay_s", "method", "path"}``), ``DELETE /_test/failures``, ``POST
/_test/payment_intents/{id}/authenticate`` (``{"outcome": "succeeded"|"failed"}``), ``GET
/_test/3ds/{id}?outcome=…`` (the ``redirect_to_url`` page: authenticates, then redirects to the
``return_url``), ``GET /_test/events?payment_intent=pi_…``, ``POST /_test/disputes``
(``{"charge", "amount", "reason"}``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import http
import json
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import httpx

DEFAULT_SECRET_KEY = "sk_test_fake"
DEFAULT_WEBHOOK_SECRET = "whsec_test"
API_VERSION = "2026-10-28.endive"  # what stripe-python 16 pins
PAYMENT_METHOD_TYPES_REMOVED = "2026-09-30"  # endive: payment_method_types is no longer writable
MAX_AMOUNT = 99_999_999
MAX_IDEMPOTENCY_KEY = 255
MIN_AMOUNTS = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50, "jpy": 50}
ZERO_DECIMAL = frozenset({"jpy"})
NON_REDIRECT_TYPES = frozenset({"card"})
SAVED_STATUSES = frozenset({200, 402})  # answers given once the endpoint began executing
_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SUBKEY = re.compile(r"\[([^\[\]]*)\]")
_DOCS = "https://stripe.com/docs/error-codes/"
_T = TypeVar("_T")

CREATE_PARAMS = frozenset(
    {"amount", "currency", "payment_method", "confirm", "metadata", "description", "expand"}
    | {"return_url", "automatic_payment_methods", "allowed_payment_method_types"}
    | {"payment_method_types", "error_on_requires_action", "customer", "receipt_email"}
    | {"statement_descriptor_suffix"}
)
CONFIRM_PARAMS = frozenset({"payment_method", "return_url", "expand", "error_on_requires_action"})
REFUND_PARAMS = frozenset({"payment_intent", "charge", "amount", "reason", "metadata", "expand"})
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
INTENT_EXPANDABLE = frozenset({"latest_charge", "payment_method"})


@dataclass(frozen=True)
class TestCard:
    """What a Stripe test PaymentMethod token stands for (docs.stripe.com/testing)."""

    __test__ = False  # not a pytest class

    brand: str
    last4: str
    funding: str = "credit"
    country: str = "US"
    outcome: Literal["succeed", "decline", "authenticate"] = "succeed"
    code: str = ""  # card_error code when declined
    decline_code: str = ""
    message: str = ""


_DECLINED = "Your card was declined."
TEST_CARDS: dict[str, TestCard] = {
    "pm_card_visa": TestCard("visa", "4242"),
    "pm_card_visa_debit": TestCard("visa", "5556", funding="debit"),
    "pm_card_mastercard": TestCard("mastercard", "4444"),
    "pm_card_mastercard_debit": TestCard("mastercard", "8210", funding="debit"),
    "pm_card_amex": TestCard("amex", "0005"),
    "pm_card_discover": TestCard("discover", "1117"),
    "pm_card_visa_chargeDeclined": TestCard(
        "visa", "0002", outcome="decline", code="card_declined", decline_code="generic_decline"
    ),
    "pm_card_chargeDeclined": TestCard(
        "visa", "0002", outcome="decline", code="card_declined", decline_code="generic_decline"
    ),
    "pm_card_visa_chargeDeclinedInsufficientFunds": TestCard(
        "visa", "9995", outcome="decline", code="card_declined", decline_code="insufficient_funds"
    ),
    "pm_card_chargeDeclinedInsufficientFunds": TestCard(
        "visa", "9995", outcome="decline", code="card_declined", decline_code="insufficient_funds"
    ),
    "pm_card_visa_chargeDeclinedLostCard": TestCard(
        "visa", "9987", outcome="decline", code="card_declined", decline_code="lost_card"
    ),
    "pm_card_visa_chargeDeclinedStolenCard": TestCard(
        "visa", "9979", outcome="decline", code="card_declined", decline_code="stolen_card"
    ),
    "pm_card_chargeDeclinedExpiredCard": TestCard(
        "visa", "0069", outcome="decline", code="expired_card", decline_code="expired_card"
    ),
    "pm_card_chargeDeclinedIncorrectCvc": TestCard(
        "visa", "0127", outcome="decline", code="incorrect_cvc", decline_code="incorrect_cvc"
    ),
    "pm_card_chargeDeclinedProcessingError": TestCard(
        "visa", "0119", outcome="decline", code="processing_error", decline_code="processing_error"
    ),
    "pm_card_authenticationRequired": TestCard("visa", "3184", outcome="authenticate"),
    "pm_card_authenticationRequiredOnSetup": TestCard("visa", "3155", outcome="authenticate"),
    "pm_card_threeDSecure2Required": TestCard("visa", "3220", outcome="authenticate"),
}
DECLINE_MESSAGES = {
    "generic_decline": _DECLINED,
    "insufficient_funds": "Your card has insufficient funds.",
    "lost_card": _DECLINED,
    "stolen_card": _DECLINED,
    "expired_card": "Your card has expired.",
    "incorrect_cvc": "Your card's security code is incorrect.",
    "processing_error": "An error occurred while processing your card. Try again in a little bit.",
    "authentication_required": "Your card was declined. This transaction requires authentication.",
}
AUTH_FAILED_MESSAGE = (
    "The provided PaymentMethod has failed authentication. You can provide payment_method_data"
    " or a new PaymentMethod to attempt to fulfill this PaymentIntent again."
)
SERVER_ERROR_MESSAGE = (
    "Sorry, something went wrong. We've already been notified of the problem, but if you need"
    " any help, you can reach us at support.stripe.com/contact."
)
RATE_LIMIT_MESSAGE = (
    "Request rate limit exceeded. Learn more about rate limits here"
    " https://stripe.com/docs/rate-limits."
)


def new_id(prefix: str, length: int = 24) -> str:
    """A Stripe-looking id: ``pi_3…``, ``ch_3…`` (random, base62)."""
    return f"{prefix}_3" + "".join(secrets.choice(_ALPHABET) for _ in range(length - 1))


def _clone(value: _T) -> _T:
    return copy.deepcopy(value)


@dataclass
class RecordedRequest:
    """One API request as received, and what the fake answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, Any] = field(default_factory=dict)  # decoded form (POST) or query (GET)
    status: int = 0
    replayed: bool = False
    dropped: bool = False

    @property
    def idempotency_key(self) -> str | None:
        return self.headers.get("idempotency-key")

    def raw(self) -> str:
        """Everything that came over the wire (to look for what must never be sent)."""
        lines = [f"{self.method} {self.path}?{self.query}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return "\n".join(lines) + "\n\n" + self.body.decode("utf-8", "replace")


@dataclass
class Injection:
    """A fault for the next ``count`` API requests matching ``method`` / ``path`` (a prefix)."""

    kind: Literal["status", "drop_before", "drop_after", "delay"]
    count: int | None = 1  # None: forever
    status: int = 500
    delay_s: float = 0.0
    method: str | None = None
    path: str | None = None
    body: bytes | None = None  # for "status": the body (default: Stripe's error object)
    headers: dict[str, str] = field(default_factory=dict)

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or path.startswith(self.path)
        )


@dataclass(frozen=True)
class WebhookDelivery:
    """One signed event POSTed to a receiver; ``status`` 0: the receiver could not be reached."""

    url: str
    event: dict[str, Any]
    payload: bytes
    signature: str
    status: int
    response_body: str = ""


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class _Saved:
    """The answer saved for an idempotency key."""

    endpoint: str
    params: dict[str, Any]
    status: int
    body: bytes
    request_id: str


class _ApiError(Exception):
    def __init__(self, status: int, error: Mapping[str, Any]) -> None:
        super().__init__(status, error.get("message"))
        self.status = status
        self.error = dict(error)


def stripe_error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    **extra: Any,
) -> _ApiError:
    """Stripe's error object; absent fields are left out, as Stripe does."""
    error: dict[str, Any] = {}
    if code:
        error["code"] = code
        error["doc_url"] = _DOCS + code.replace("_", "-")
    error.update({k: v for k, v in extra.items() if v is not None})
    error["message"] = message
    if param:
        error["param"] = param
    error["type"] = type_
    return _ApiError(status, error)


def _json(payload: Any) -> bytes:
    return json.dumps(payload, indent=2).encode()


def _listify(node: Any, key: str = "") -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _listify(v, k) for k, v in node.items()}
    if key != "metadata" and converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def decode_params(raw: str) -> dict[str, Any]:
    """Stripe's form encoding → nested dicts and lists (``a[b][0]=x``, ``a[]=x``)."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        match = _KEY.fullmatch(key)
        if match is None:
            raise stripe_error(400, f"Invalid parameter name: {key}")
        parts = [match.group(1), *_SUBKEY.findall(match.group(2))]
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise stripe_error(400, f"Invalid array or hash: {key}", param=parts[0])
            node = child
        last = parts[-1] or str(len(node))
        if isinstance(node.get(last), dict):
            raise stripe_error(400, f"Invalid array or hash: {key}", param=parts[0])
        node[last] = value
    result = _listify(root)
    assert isinstance(result, dict)
    return result


def _bool(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return False
    if value in {"true", "false"}:
        return bool(value == "true")
    raise stripe_error(400, f"Invalid boolean: {value}", param=name)


def _integer(value: Any, name: str) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]{1,18}", value):
        raise stripe_error(
            400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=name
        )
    return int(value)


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise stripe_error(400, f"Invalid array: {name}", param=name)
    return list(value)


def _metadata(value: Any) -> dict[str, str]:
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise stripe_error(400, "Invalid hash", param="metadata")
    if len(value) > 50:
        raise stripe_error(400, "Metadata can have at most 50 keys.", param="metadata")
    for key, item in value.items():
        if not isinstance(item, str):
            raise stripe_error(400, "Invalid hash", param=f"metadata[{key}]")
        if len(key) > 40 or len(item) > 500:
            raise stripe_error(
                400, "Metadata keys are at most 40 and values 500 characters.", param="metadata"
            )
    return dict(value)


def _expand(params: Mapping[str, Any], allowed: frozenset[str]) -> set[str]:
    expand = params.get("expand")
    if expand is None:
        return set()
    names = _string_list(expand, "expand")
    for name in names:
        if name not in allowed:
            raise stripe_error(400, f"This property cannot be expanded ({name}).", param="expand")
    return set(names)


def _money(amount: int, currency: str) -> str:
    if currency in ZERO_DECIMAL:
        return f"{amount} {currency.upper()}"
    return f"${amount / 100:,.2f}" if currency == "usd" else f"{amount / 100:,.2f} {currency}"


def _mask(key: str) -> str:
    return key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "****"


def _reject_unknown(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for name in params:
        if name not in allowed:
            raise stripe_error(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )


class FakeStripe:
    """A fake Stripe account: its API server, its objects and its events."""

    def __init__(
        self,
        secret_key: str = DEFAULT_SECRET_KEY,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
        *,
        clock: Callable[[], float] = time.time,
        webhook_url: str | None = None,
    ) -> None:
        self.secret_key = secret_key
        self.webhook_secret = webhook_secret
        self.clock = clock
        self.webhook_url = webhook_url
        self.url = ""
        # state (Stripe-shaped dicts)
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.payment_methods: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.disputes: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[RecordedRequest] = []
        self.deliveries: list[WebhookDelivery] = []
        self.injections: list[Injection] = []
        self._cards: dict[str, TestCard] = {}  # pm id → behaviour
        self._return_urls: dict[str, str] = {}  # pi id → return_url
        self._idempotent: dict[str, _Saved] = {}
        self._in_flight: set[str] = set()
        self._context: tuple[str | None, str | None] = (None, None)  # (request id, key)
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------------ test helpers

    def fail_next(
        self,
        count: int | None = 1,
        *,
        status: int = 500,
        method: str | None = None,
        path: str | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Injection:
        """Answer ``status`` (500 ``api_error``, 429 ``rate_limit``, …) before any processing."""
        return self._inject(
            Injection("status", count, status, method=method, path=path, body=body)
            if headers is None
            else Injection(
                "status", count, status, method=method, path=path, body=body, headers=dict(headers)
            )
        )

    def drop_next(
        self,
        count: int | None = 1,
        *,
        after_processing: bool = True,
        method: str | None = None,
        path: str | None = None,
    ) -> Injection:
        """Close the connection without an answer, after processing (the default) or before."""
        kind: Literal["drop_after", "drop_before"] = (
            "drop_after" if after_processing else "drop_before"
        )
        return self._inject(Injection(kind, count, method=method, path=path))

    def delay_next(
        self,
        seconds: float,
        count: int | None = 1,
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> Injection:
        """Hold the next request ``seconds`` inside processing (its idempotency key in flight)."""
        return self._inject(Injection("delay", count, delay_s=seconds, method=method, path=path))

    def clear_failures(self) -> None:
        with self._lock:
            self.injections.clear()

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if r.method == method and r.path.startswith(path_prefix)
            ]

    def events_for(self, payment_intent_id: str) -> list[dict[str, Any]]:
        """The events about one PaymentIntent (its own, its charges', refunds' and disputes')."""
        with self._lock:
            return [_clone(e) for e in self.events if _intent_of(e) == payment_intent_id]

    def event_types_for(self, payment_intent_id: str) -> list[str]:
        return [e["type"] for e in self.events_for(payment_intent_id)]

    def authenticate(self, payment_intent_id: str, *, succeed: bool = True) -> dict[str, Any]:
        """Finish a 3-D Secure challenge as the cardholder would; returns the PaymentIntent."""
        with self._lock:
            intent = self.payment_intents.get(payment_intent_id)
            if intent is None:
                raise KeyError(payment_intent_id)
            if intent["status"] != "requires_action":
                raise ValueError(f"{payment_intent_id} is {intent['status']}, not requires_action")
            card = self._cards[intent["payment_method"]]
            if succeed:
                self._succeed(intent, card)
            else:
                intent["status"] = "requires_payment_method"
                intent["next_action"] = None
                intent["last_payment_error"] = {
                    "code": "payment_intent_authentication_failure",
                    "doc_url": _DOCS + "payment-intent-authentication-failure",
                    "message": AUTH_FAILED_MESSAGE,
                    "payment_method": _clone(self.payment_methods[intent["payment_method"]]),
                    "type": "invalid_request_error",
                }
                self._emit("payment_intent.payment_failed", intent)
            return _clone(intent)

    def create_dispute(
        self, charge_id: str, amount: int | None = None, *, reason: str = "fraudulent"
    ) -> dict[str, Any]:
        """The cardholder disputes a paid charge (``charge.dispute.created``)."""
        with self._lock:
            charge = self.charges.get(charge_id)
            if charge is None:
                raise KeyError(charge_id)
            if not charge["paid"]:
                raise ValueError(f"{charge_id} was not paid")
            now = int(self.clock())
            dispute = {
                "id": new_id("dp"),
                "object": "dispute",
                "amount": charge["amount_captured"] if amount is None else amount,
                "balance_transactions": [],
                "charge": charge_id,
                "created": now,
                "currency": charge["currency"],
                "evidence_details": {
                    "due_by": now + 7 * 86_400,
                    "has_evidence": False,
                    "past_due": False,
                    "submission_count": 0,
                },
                "is_charge_refundable": False,
                "livemode": False,
                "metadata": {},
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "status": "needs_response",
            }
            self.disputes[dispute["id"]] = dispute
            charge["disputed"] = True
            self._emit("charge.dispute.created", dispute)
            return _clone(dispute)

    def make_event(
        self, event_type: str, obj: Mapping[str, Any], *, created: int | None = None
    ) -> dict[str, Any]:
        """A Stripe Event around ``obj`` (not recorded; ``send_webhook`` records it)."""
        with self._lock:
            request_id, key = self._context
        return {
            "id": new_id("evt"),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(self.clock()) if created is None else created,
            "data": {"object": _clone(dict(obj))},
            "livemode": False,
            "pending_webhooks": 1 if self.webhook_url else 0,
            "request": {"id": request_id, "idempotency_key": key},
            "type": event_type,
        }

    @staticmethod
    def event_payload(event: Mapping[str, Any]) -> bytes:
        """The exact bytes Stripe would POST for ``event``."""
        return _json(event)

    def sign(self, payload: bytes | str, t: int | None = None, *, secret: str | None = None) -> str:
        """A ``Stripe-Signature`` header: ``t=<ts>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>``."""
        timestamp = int(self.clock()) if t is None else t
        text = payload.decode("utf-8") if isinstance(payload, bytes) else payload
        key = (self.webhook_secret if secret is None else secret).encode()
        mac = hmac.new(key, f"{timestamp}.{text}".encode(), hashlib.sha256).hexdigest()
        return f"t={timestamp},v1={mac}"

    def deliver(
        self,
        url: str,
        event: Mapping[str, Any],
        *,
        secret: str | None = None,
        t: int | None = None,
    ) -> WebhookDelivery:
        """POST ``event`` to ``url`` now, signed as Stripe signs (blocking)."""
        payload = self.event_payload(event)
        signature = self.sign(payload, t, secret=secret)
        try:
            with httpx.Client(timeout=10.0) as client:
                response = client.post(url, content=payload, headers=_webhook_headers(signature))
            status, text = response.status_code, response.text
        except httpx.HTTPError as exc:
            status, text = 0, type(exc).__name__
        delivery = WebhookDelivery(url, _clone(dict(event)), payload, signature, status, text)
        with self._lock:
            self.deliveries.append(delivery)
        return delivery

    def send_webhook(
        self,
        url: str,
        event_type: str,
        obj: Mapping[str, Any],
        *,
        secret: str | None = None,
        t: int | None = None,
    ) -> WebhookDelivery:
        """Build an event around ``obj``, record it, and ``deliver`` it to ``url``."""
        event = self.make_event(event_type, obj)
        with self._lock:
            self.events.append(event)
        return self.deliver(url, event, secret=secret, t=t)

    def wait_for_deliveries(self, count: int, timeout_s: float = 5.0) -> list[WebhookDelivery]:
        """Block until ``count`` deliveries were made (``webhook_url`` delivers in background)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.deliveries)} of {count} webhook deliveries")
            time.sleep(0.01)

    # ------------------------------------------------------------------------ server

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve on a free loopback port (asyncio in a thread); yields the base URL."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        ready = threading.Event()
        thread = threading.Thread(
            target=asyncio.run, args=(self._main(sock, ready),), name="fake-stripe", daemon=True
        )
        thread.start()
        try:
            if not ready.wait(10):
                raise RuntimeError("the fake Stripe server did not start")
            self.url = f"http://{host}:{port}"
            yield self.url
        finally:
            loop, stop = self._loop, self._stop
            if loop is not None and stop is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=10)
            sock.close()
            self.url = ""

    async def _main(self, sock: socket.socket, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=10.0)
        server = await asyncio.start_server(self._connection, sock=sock)
        ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
            await self._http.aclose()
            self._loop = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, target, headers, body = request
                reply = await self._handle(method, target, headers, body)
                if reply is None:  # drop the connection without an answer
                    writer.transport.abort()
                    return
                writer.write(_encode_reply(reply))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    # ------------------------------------------------------------------------ request pipeline

    async def _handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> Reply | None:
        split = urlsplit(target)
        path = split.path
        if path.startswith("/_test/"):
            return self._control(method, path, split.query, body)
        record = RecordedRequest(method, path, split.query, headers, body)
        with self._lock:
            self.requests.append(record)
        request_id = "req_" + "".join(secrets.choice(_ALPHABET) for _ in range(14))
        reply = await self._answer(record, request_id)
        if reply is None:
            record.dropped = True
            return None
        reply.headers.setdefault("Request-Id", request_id)
        reply.headers.setdefault("Stripe-Version", headers.get("stripe-version", API_VERSION))
        if record.idempotency_key and method == "POST":
            reply.headers.setdefault("Idempotency-Key", record.idempotency_key)
        record.status = reply.status
        return reply

    async def _answer(self, record: RecordedRequest, request_id: str) -> Reply | None:
        """Injected faults, then admission, then the endpoint (``None``: drop the connection)."""
        with self._lock:
            injection = self._take_injection(record.method, record.path)
        kind = injection.kind if injection is not None else None
        if injection is not None and kind == "status":
            return self._injected(injection)
        if kind == "drop_before":
            return None
        refused = self._admit(record)
        if refused is not None:
            return refused
        key = record.idempotency_key if record.method == "POST" else None
        try:
            if injection is not None and kind == "delay":
                await asyncio.sleep(injection.delay_s)
            with self._lock:
                self._context = (request_id, key)
                try:
                    reply = self._route(
                        record.method, record.path, record.params, record.headers, request_id
                    )
                except _ApiError as exc:
                    reply = _error_reply(exc)
                finally:
                    self._context = (None, None)
                if key is not None and reply.status in SAVED_STATUSES:
                    self._idempotent[key] = _Saved(
                        f"{record.method} {record.path}",
                        record.params,
                        reply.status,
                        reply.body,
                        request_id,
                    )
        finally:
            if key is not None:
                with self._lock:
                    self._in_flight.discard(key)
        return None if kind == "drop_after" else reply

    def _admit(self, record: RecordedRequest) -> Reply | None:
        """Auth, parameters, idempotency: a refusal or replay, or ``None`` to go on."""
        try:
            self._authenticate(record.headers)
            raw = record.body.decode("utf-8") if record.method == "POST" else record.query
            record.params = decode_params(raw)
        except _ApiError as exc:
            return _error_reply(exc)
        except UnicodeDecodeError:
            return _error_reply(stripe_error(400, "Invalid request body"))
        key = record.idempotency_key if record.method == "POST" else None
        if key is None:
            return None
        with self._lock:
            return self._idempotency_check(key, f"{record.method} {record.path}", record)

    def _idempotency_check(self, key: str, endpoint: str, record: RecordedRequest) -> Reply | None:
        """Replay, refuse, or mark ``key`` in flight (``None``: go on)."""
        if not key or len(key) > MAX_IDEMPOTENCY_KEY:
            return _error_reply(
                stripe_error(
                    400,
                    f"Invalid idempotency key: keys are 1 to {MAX_IDEMPOTENCY_KEY} characters.",
                )
            )
        saved = self._idempotent.get(key)
        if saved is not None:
            if saved.endpoint != endpoint:
                return _error_reply(
                    stripe_error(
                        400,
                        "Keys for idempotent requests can only be used for the same endpoint they"
                        f" were first used for ('{endpoint}' vs '{saved.endpoint}'). Try using a"
                        f" key other than '{key}' if you meant to execute a different request.",
                        type_="idempotency_error",
                    )
                )
            if saved.params != record.params:
                return _error_reply(
                    stripe_error(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters"
                        f" they were first used with. Try using a key other than '{key}' if you"
                        " meant to execute a different request.",
                        type_="idempotency_error",
                    )
                )
            record.replayed = True
            return Reply(
                saved.status,
                saved.body,
                {"Idempotent-Replayed": "true", "Original-Request": saved.request_id},
            )
        if key in self._in_flight:
            return _error_reply(
                stripe_error(
                    409,
                    "There is currently another in-progress request using this Idempotent Key"
                    " (that probably means you submitted twice, and the other request is still"
                    f" going through): {key}. Please try again later.",
                    code="idempotency_key_in_use",
                )
            )
        self._in_flight.add(key)
        return None

    def _inject(self, injection: Injection) -> Injection:
        with self._lock:
            self.injections.append(injection)
        return injection

    def _take_injection(self, method: str, path: str) -> Injection | None:
        for injection in self.injections:
            if injection.matches(method, path):
                if injection.count is not None:
                    injection.count -= 1
                    if injection.count <= 0:
                        self.injections.remove(injection)
                return injection
        return None

    @staticmethod
    def _injected(injection: Injection) -> Reply:
        if injection.body is not None:
            content_type = "application/json" if injection.body[:1] == b"{" else "text/html"
            return Reply(injection.status, injection.body, dict(injection.headers), content_type)
        if injection.status == 429:
            error = stripe_error(429, RATE_LIMIT_MESSAGE, code="rate_limit")
        else:
            error = stripe_error(injection.status, SERVER_ERROR_MESSAGE, type_="api_error")
        reply = _error_reply(error)
        reply.headers.update(injection.headers)
        return reply

    def _authenticate(self, headers: Mapping[str, str]) -> None:
        auth = headers.get("authorization", "")
        key = ""
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        elif auth[:6].lower() == "basic ":
            with contextlib.suppress(binascii.Error, UnicodeDecodeError):
                key = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
        if not key:
            raise stripe_error(
                401,
                "You did not provide an API key. You need to provide your API key in the"
                " Authorization header, using Bearer auth (e.g. 'Authorization: Bearer"
                " YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details,"
                " or we can help at https://support.stripe.com/.",
            )
        if not hmac.compare_digest(key.encode(), self.secret_key.encode()):
            raise stripe_error(401, f"Invalid API Key provided: {_mask(key)}")

    # ------------------------------------------------------------------------ Stripe API

    def _route(  # noqa: PLR0911 - one return per route
        self,
        method: str,
        path: str,
        params: dict[str, Any],
        headers: Mapping[str, str],
        request_id: str,
    ) -> Reply:
        parts = [p for p in path.split("/") if p]
        version = headers.get("stripe-version", API_VERSION)
        if parts == ["v1", "payment_intents"] and method == "POST":
            return self._create_intent(params, version, request_id)
        if parts[:2] == ["v1", "payment_intents"] and len(parts) == 3 and method == "GET":
            intent = self._intent(parts[2])
            return _ok(self._intent_view(intent, _expand(params, INTENT_EXPANDABLE)))
        if parts[:2] == ["v1", "payment_intents"] and len(parts) == 4 and method == "POST":
            intent = self._intent(parts[2])
            if parts[3] == "confirm":
                return self._confirm_route(intent, params, request_id)
            if parts[3] == "cancel":
                return self._cancel(intent, params)
        if parts == ["v1", "refunds"] and method == "POST":
            return self._refund(params)
        if parts[:2] == ["v1", "refunds"] and len(parts) == 3 and method == "GET":
            return _ok(self._lookup(self.refunds, parts[2], "refund", "refund"))
        if parts[:2] == ["v1", "charges"] and len(parts) == 3 and method == "GET":
            return _ok(self._lookup(self.charges, parts[2], "charge", "charge"))
        if parts == ["v1", "events"] and method == "GET":
            return self._list_events(params)
        if parts[:2] == ["v1", "events"] and len(parts) == 3 and method == "GET":
            found = [e for e in self.events if e["id"] == parts[2]]
            if not found:
                raise stripe_error(
                    404, f"No such event: '{parts[2]}'", code="resource_missing", param="id"
                )
            return _ok(found[0])
        raise stripe_error(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or"
            " we can help at https://support.stripe.com/.",
        )

    def _lookup(
        self, table: Mapping[str, dict[str, Any]], object_id: str, noun: str, param: str
    ) -> dict[str, Any]:
        found = table.get(object_id)
        if found is None:
            raise stripe_error(
                404, f"No such {noun}: '{object_id}'", code="resource_missing", param=param
            )
        return found

    def _intent(self, intent_id: str) -> dict[str, Any]:
        return self._lookup(self.payment_intents, intent_id, "payment_intent", "intent")

    def _intent_view(self, intent: Mapping[str, Any], expand: set[str]) -> dict[str, Any]:
        view = _clone(dict(intent))
        if "latest_charge" in expand and view.get("latest_charge"):
            view["latest_charge"] = _clone(self.charges[view["latest_charge"]])
        if "payment_method" in expand and view.get("payment_method"):
            view["payment_method"] = _clone(self.payment_methods[view["payment_method"]])
        return view

    def _create_intent(self, params: dict[str, Any], version: str, request_id: str) -> Reply:
        _reject_unknown(params, CREATE_PARAMS)
        for name in ("amount", "currency"):
            if name not in params:
                raise stripe_error(
                    400, f"Missing required param: {name}.", code="parameter_missing", param=name
                )
        amount = _integer(params["amount"], "amount")
        currency = params["currency"]
        if not isinstance(currency, str) or currency.lower() not in MIN_AMOUNTS:
            raise stripe_error(
                400,
                f"Invalid currency: {currency}. Stripe currently supports these currencies: "
                + ", ".join(sorted(MIN_AMOUNTS)),
                param="currency",
            )
        currency = currency.lower()
        minimum = MIN_AMOUNTS[currency]
        if amount < minimum:
            raise stripe_error(
                400,
                f"Amount must be at least {_money(minimum, currency)} {currency}",
                code="amount_too_small",
                param="amount",
            )
        if amount > MAX_AMOUNT:
            raise stripe_error(
                400,
                f"Amount must be no more than {_money(MAX_AMOUNT, currency)}",
                code="amount_too_large",
                param="amount",
            )
        metadata = _metadata(params.get("metadata"))
        expand = _expand(params, INTENT_EXPANDABLE)
        confirm = _bool(params, "confirm")
        types = self._payment_method_types(params, version)
        return_url = params.get("return_url") or ""
        if return_url and not confirm:
            raise stripe_error(
                400,
                "You can only pass in a return_url if confirm=true.",
                param="return_url",
            )
        apm = params.get("automatic_payment_methods")
        redirects_possible = (
            apm.get("allow_redirects", "always") != "never"
            if isinstance(apm, dict)
            else not set(types) <= NON_REDIRECT_TYPES
        )
        if confirm and redirects_possible and not return_url:
            raise stripe_error(
                400,
                "This PaymentIntent is configured to accept payment methods enabled in your"
                " Dashboard. Because some of these payment methods might redirect your customer"
                " off of your page, you must provide a `return_url`. If you don't want to accept"
                " redirect-based payment methods, set `automatic_payment_methods[enabled]` to"
                " `true` and `automatic_payment_methods[allow_redirects]` to `never` when"
                " creating Setup Intents and Payment Intents.",
            )
        pm_id = params.get("payment_method") or None
        if confirm and pm_id is None:
            raise stripe_error(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method. To"
                " confirm the PaymentIntent, provide a `payment_method` or `confirmation_token`.",
                code="payment_intent_unexpected_state",
            )
        payment_method = self._payment_method(pm_id) if pm_id is not None else None
        intent_id = new_id("pi")
        intent: dict[str, Any] = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_details": {"tip": {}},
            "amount_received": 0,
            "application": None,
            "application_fee_amount": None,
            "automatic_payment_methods": (
                {
                    "allow_redirects": apm.get("allow_redirects", "always"),
                    "enabled": apm.get("enabled") == "true",
                }
                if isinstance(apm, dict)
                else None
            ),
            "canceled_at": None,
            "cancellation_reason": None,
            "capture_method": "automatic_async",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": int(self.clock()),
            "currency": currency,
            "customer": params.get("customer"),
            "description": params.get("description") or None,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "next_action": None,
            "on_behalf_of": None,
            "payment_method": payment_method["id"] if payment_method else None,
            "payment_method_options": {
                "card": {
                    "installments": None,
                    "network": None,
                    "request_three_d_secure": "automatic",
                }
            },
            "payment_method_types": types,
            "processing": None,
            "receipt_email": params.get("receipt_email"),
            "review": None,
            "setup_future_usage": None,
            "shipping": None,
            "statement_descriptor": None,
            "statement_descriptor_suffix": params.get("statement_descriptor_suffix"),
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
            "transfer_data": None,
            "transfer_group": None,
        }
        self.payment_intents[intent_id] = intent
        self._emit("payment_intent.created", intent)
        if not confirm:
            return _ok(self._intent_view(intent, expand))
        return self._confirm(
            intent,
            return_url=return_url,
            error_on_requires_action=_bool(params, "error_on_requires_action"),
            expand=expand,
            request_id=request_id,
        )

    def _payment_method_types(self, params: Mapping[str, Any], version: str) -> list[str]:
        given = [
            name
            for name in (
                "automatic_payment_methods",
                "allowed_payment_method_types",
                "payment_method_types",
            )
            if params.get(name) is not None
        ]
        if len(given) > 1:
            raise stripe_error(
                400, "You may only specify one of these parameters: " + ", ".join(given) + "."
            )
        if "payment_method_types" in params:
            if version[:10] >= PAYMENT_METHOD_TYPES_REMOVED:
                raise stripe_error(
                    400,
                    "The `payment_method_types` parameter is no longer supported on this API"
                    " version. Use `automatic_payment_methods` or `allowed_payment_method_types`"
                    " instead.",
                    code="payment_method_types_no_longer_supported",
                    param="payment_method_types",
                )
            return _string_list(params["payment_method_types"], "payment_method_types")
        if "allowed_payment_method_types" in params:
            allowed = _string_list(
                params["allowed_payment_method_types"], "allowed_payment_method_types"
            )
            return [t for t in allowed if t == "card"] or ["card"]
        apm = params.get("automatic_payment_methods")
        if apm is not None and (not isinstance(apm, dict) or apm.get("enabled") != "true"):
            raise stripe_error(
                400,
                "automatic_payment_methods[enabled] must be true when it is given.",
                param="automatic_payment_methods[enabled]",
            )
        # Dynamic payment methods (the default): the Dashboard's set, which may redirect.
        return ["card", "link"]

    def _payment_method(self, token: Any) -> dict[str, Any]:
        if isinstance(token, str) and token in self.payment_methods:
            return self.payment_methods[token]
        card = TEST_CARDS.get(token) if isinstance(token, str) else None
        if card is None:
            raise stripe_error(
                400,
                f"No such PaymentMethod: '{token}'",
                code="resource_missing",
                param="payment_method",
            )
        pm_id = new_id("pm").replace("pm_3", "pm_1", 1)
        method = {
            "id": pm_id,
            "object": "payment_method",
            "allow_redisplay": "unspecified",
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "card": _card_details(card) | {"fingerprint": secrets.token_hex(8)},
            "created": int(self.clock()),
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": "card",
        }
        self.payment_methods[pm_id] = method
        self._cards[pm_id] = card
        return method

    def _confirm_route(
        self, intent: dict[str, Any], params: dict[str, Any], request_id: str
    ) -> Reply:
        _reject_unknown(params, CONFIRM_PARAMS)
        expand = _expand(params, INTENT_EXPANDABLE)
        if intent["status"] not in {"requires_payment_method", "requires_confirmation"}:
            raise stripe_error(
                400,
                "You cannot confirm this PaymentIntent because it has a status of"
                f" {intent['status']}. Only a PaymentIntent with one of the following statuses"
                " may be confirmed: requires_confirmation, requires_payment_method.",
                code="payment_intent_unexpected_state",
            )
        if params.get("payment_method"):
            intent["payment_method"] = self._payment_method(params["payment_method"])["id"]
        if not intent["payment_method"]:
            raise stripe_error(
                400,
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
            )
        return self._confirm(
            intent,
            return_url=params.get("return_url") or self._return_urls.get(intent["id"], ""),
            error_on_requires_action=_bool(params, "error_on_requires_action"),
            expand=expand,
            request_id=request_id,
        )

    def _confirm(
        self,
        intent: dict[str, Any],
        *,
        return_url: str,
        error_on_requires_action: bool,
        expand: set[str],
        request_id: str,
    ) -> Reply:
        pm_id = intent["payment_method"]
        card = self._cards[pm_id]
        intent["last_payment_error"] = None
        intent["next_action"] = None
        if return_url:
            self._return_urls[intent["id"]] = return_url
        if card.outcome == "succeed":
            self._succeed(intent, card)
            return _ok(self._intent_view(intent, expand))
        if card.outcome == "authenticate" and not error_on_requires_action:
            intent["status"] = "requires_action"
            intent["next_action"] = self._next_action(intent, return_url)
            self._emit("payment_intent.requires_action", intent)
            return _ok(self._intent_view(intent, expand))
        code, decline_code = card.code, card.decline_code
        if card.outcome == "authenticate":
            code = decline_code = "authentication_required"
        raise self._decline(intent, code, decline_code, request_id)

    def _next_action(self, intent: Mapping[str, Any], return_url: str) -> dict[str, Any]:
        page = f"{self.url}/_test/3ds/{intent['id']}"
        if return_url:
            return {
                "redirect_to_url": {"return_url": return_url, "url": page},
                "type": "redirect_to_url",
            }
        return {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {
                "source": new_id("src"),
                "stripe_js": page,
                "type": "three_d_secure_redirect",
            },
        }

    def _succeed(self, intent: dict[str, Any], card: TestCard) -> None:
        charge = self._new_charge(intent, card, paid=True)
        intent["status"] = "succeeded"
        intent["amount_received"] = intent["amount"]
        intent["latest_charge"] = charge["id"]
        intent["next_action"] = None
        intent["last_payment_error"] = None
        self._emit("charge.succeeded", charge)
        self._emit("payment_intent.succeeded", intent)

    def _decline(
        self, intent: dict[str, Any], code: str, decline_code: str, request_id: str
    ) -> _ApiError:
        card = self._cards[intent["payment_method"]]
        message = DECLINE_MESSAGES.get(decline_code, _DECLINED)
        charge = self._new_charge(
            intent, card, paid=False, failure=(code, message, decline_code or code)
        )
        payment_method = _clone(self.payment_methods[intent["payment_method"]])
        intent["status"] = "requires_payment_method"
        intent["latest_charge"] = charge["id"]
        intent["last_payment_error"] = {
            "charge": charge["id"],
            "code": code,
            "decline_code": decline_code or None,
            "doc_url": _DOCS + code.replace("_", "-"),
            "message": message,
            "payment_method": payment_method,
            "type": "card_error",
        }
        self._emit("charge.failed", charge)
        self._emit("payment_intent.payment_failed", intent)
        return stripe_error(
            402,
            message,
            type_="card_error",
            code=code,
            charge=charge["id"],
            decline_code=decline_code or None,
            payment_intent=_clone(intent),
            payment_method=payment_method,
            request_log_url=f"https://dashboard.stripe.com/test/logs/{request_id}",
        )

    def _new_charge(
        self,
        intent: Mapping[str, Any],
        card: TestCard,
        *,
        paid: bool,
        failure: tuple[str, str, str] | None = None,
    ) -> dict[str, Any]:
        charge_id = new_id("ch")
        amount = intent["amount"]
        outcome = (
            {
                "network_status": "approved_by_network",
                "reason": None,
                "risk_level": "normal",
                "risk_score": 32,
                "seller_message": "Payment complete.",
                "type": "authorized",
            }
            if paid
            else {
                "network_status": "declined_by_network",
                "reason": failure[2] if failure else None,
                "risk_level": "normal",
                "risk_score": 41,
                "seller_message": "The bank did not return any further details with this decline.",
                "type": "issuer_declined",
            }
        )
        charge: dict[str, Any] = {
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": amount if paid else 0,
            "amount_refunded": 0,
            "balance_transaction": new_id("txn") if paid else None,
            "billing_details": {"address": None, "email": None, "name": None, "phone": None},
            "captured": paid,
            "created": int(self.clock()),
            "currency": intent["currency"],
            "customer": intent.get("customer"),
            "description": intent.get("description"),
            "disputed": False,
            "failure_code": failure[0] if failure else None,
            "failure_message": failure[1] if failure else None,
            "livemode": False,
            "metadata": dict(intent["metadata"]),
            "outcome": outcome,
            "paid": paid,
            "payment_intent": intent["id"],
            "payment_method": intent["payment_method"],
            "payment_method_details": {"card": _card_details(card), "type": "card"},
            "refunded": False,
            "status": "succeeded" if paid else "failed",
        }
        self.charges[charge_id] = charge
        return charge

    def _cancel(self, intent: dict[str, Any], params: dict[str, Any]) -> Reply:
        _reject_unknown(params, frozenset({"cancellation_reason", "expand"}))
        if intent["status"] in {"succeeded", "canceled", "processing"}:
            raise stripe_error(
                400,
                "You cannot cancel this PaymentIntent because it has a status of"
                f" {intent['status']}. Only a PaymentIntent with one of the following statuses"
                " may be canceled: requires_payment_method, requires_capture,"
                " requires_confirmation, requires_action, processing.",
                code="payment_intent_unexpected_state",
            )
        intent["status"] = "canceled"
        intent["canceled_at"] = int(self.clock())
        intent["cancellation_reason"] = params.get("cancellation_reason") or "requested_by_customer"
        intent["next_action"] = None
        self._emit("payment_intent.canceled", intent)
        return _ok(self._intent_view(intent, _expand(params, INTENT_EXPANDABLE)))

    def _refund(self, params: dict[str, Any]) -> Reply:
        _reject_unknown(params, REFUND_PARAMS)
        if params.get("payment_intent"):
            intent = self._lookup(
                self.payment_intents, params["payment_intent"], "payment_intent", "payment_intent"
            )
            charge = self.charges.get(intent.get("latest_charge") or "")
            if intent["status"] != "succeeded" or charge is None or not charge["paid"]:
                raise stripe_error(
                    400,
                    f"This PaymentIntent ({intent['id']}) does not have a successful charge to"
                    " refund.",
                    param="payment_intent",
                )
        elif params.get("charge"):
            charge = self._lookup(self.charges, params["charge"], "charge", "charge")
        else:
            raise stripe_error(
                400,
                "One of the following params should be provided for this request: charge or"
                " payment_intent.",
            )
        if not charge["paid"]:
            raise stripe_error(400, f"Charge {charge['id']} was not paid.", param="charge")
        remaining = charge["amount_captured"] - charge["amount_refunded"]
        if remaining <= 0:
            raise stripe_error(
                400,
                f"Charge {charge['id']} has already been refunded.",
                code="charge_already_refunded",
            )
        amount = remaining if params.get("amount") is None else _integer(params["amount"], "amount")
        if amount <= 0:
            raise stripe_error(
                400, "Invalid positive integer", code="parameter_invalid_integer", param="amount"
            )
        if amount > remaining:
            currency = charge["currency"]
            raise stripe_error(
                400,
                f"Refund amount ({_money(amount, currency)}) is greater than unrefunded amount on"
                f" charge ({_money(remaining, currency)})",
                param="amount",
            )
        reason = params.get("reason") or None
        if reason is not None and reason not in REFUND_REASONS:
            raise stripe_error(400, f"Invalid reason: {reason}", param="reason")
        refund = {
            "id": new_id("re"),
            "object": "refund",
            "amount": amount,
            "balance_transaction": new_id("txn"),
            "charge": charge["id"],
            "created": int(self.clock()),
            "currency": charge["currency"],
            "destination_details": {"card": {"type": "refund"}, "type": "card"},
            "metadata": _metadata(params.get("metadata")),
            "payment_intent": charge["payment_intent"],
            "reason": reason,
            "receipt_number": None,
            "source_transfer_reversal": None,
            "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] >= charge["amount_captured"]
        self._emit("refund.created", refund)
        self._emit("charge.refunded", charge)
        return _ok(refund)

    def _list_events(self, params: Mapping[str, Any]) -> Reply:
        _reject_unknown(params, frozenset({"type", "limit", "starting_after"}))
        limit = 10 if params.get("limit") is None else _integer(params["limit"], "limit")
        if not 1 <= limit <= 100:
            raise stripe_error(400, "limit must be between 1 and 100", param="limit")
        events = [e for e in reversed(self.events) if params.get("type") in {None, e["type"]}]
        after = params.get("starting_after")
        if after is not None:
            ids = [e["id"] for e in events]
            if after not in ids:
                raise stripe_error(
                    404,
                    f"No such event: '{after}'",
                    code="resource_missing",
                    param="starting_after",
                )
            events = events[ids.index(after) + 1 :]
        return _ok(
            {
                "object": "list",
                "data": events[:limit],
                "has_more": len(events) > limit,
                "url": "/v1/events",
            }
        )

    # ------------------------------------------------------------------------ events

    def _emit(self, event_type: str, obj: Mapping[str, Any]) -> None:
        event = self.make_event(event_type, obj)
        self.events.append(event)
        if self.webhook_url and self._loop is not None:
            url = self.webhook_url
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._spawn_delivery, url, event)

    def _spawn_delivery(self, url: str, event: dict[str, Any]) -> None:
        task = asyncio.ensure_future(self._deliver_async(url, event))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_async(self, url: str, event: dict[str, Any]) -> None:
        payload = self.event_payload(event)
        signature = self.sign(payload)
        status, text = 0, ""
        if self._http is not None:
            try:
                response = await self._http.post(
                    url, content=payload, headers=_webhook_headers(signature)
                )
                status, text = response.status_code, response.text
            except httpx.HTTPError as exc:
                text = type(exc).__name__
        with self._lock:
            self.deliveries.append(WebhookDelivery(url, event, payload, signature, status, text))

    # ------------------------------------------------------------------------ test-control API

    def _control(  # noqa: PLR0911 - one return per route
        self, method: str, path: str, query: str, body: bytes
    ) -> Reply:
        parts = [p for p in path.split("/") if p][1:]
        try:
            data = _control_body(body)
            if parts == ["requests"] and method == "GET":
                with self._lock:
                    return _ok([_request_view(r) for r in self.requests])
            if parts == ["failures"] and method == "POST":
                kind = data.get("kind", "status")
                if kind not in {"status", "drop_before", "drop_after", "delay"}:
                    raise ValueError(f"unknown failure kind {kind!r}")
                self._inject(
                    Injection(
                        kind,
                        data.get("count", 1),
                        int(data.get("status", 500)),
                        float(data.get("delay_s", 0.0)),
                        data.get("method"),
                        data.get("path"),
                    )
                )
                return _ok({"ok": True})
            if parts == ["failures"] and method == "DELETE":
                self.clear_failures()
                return _ok({"ok": True})
            if parts[:1] == ["payment_intents"] and parts[2:] == ["authenticate"]:
                outcome = data.get("outcome", "succeeded")
                return _ok(self.authenticate(parts[1], succeed=outcome == "succeeded"))
            if parts[:1] == ["3ds"] and len(parts) == 2 and method == "GET":
                outcome = parse_qs(query).get("outcome", ["succeeded"])[0]
                self.authenticate(parts[1], succeed=outcome == "succeeded")
                with self._lock:
                    return_url = self._return_urls.get(parts[1], "")
                if return_url:
                    target = return_url + ("&" if "?" in return_url else "?")
                    target += urlencode({"payment_intent": parts[1]})
                    return Reply(302, b"", {"Location": target}, "text/plain")
                return Reply(
                    200, b"<html><body>Authentication complete.</body></html>", {}, "text/html"
                )
            if parts == ["events"] and method == "GET":
                intent_id = parse_qs(query).get("payment_intent", [""])[0]
                with self._lock:
                    events = self.events_for(intent_id) if intent_id else _clone(self.events)
                return _ok(events)
            if parts == ["disputes"] and method == "POST":
                amount = data.get("amount")
                return _ok(
                    self.create_dispute(
                        str(data["charge"]),
                        None if amount is None else int(amount),
                        reason=str(data.get("reason", "fraudulent")),
                    )
                )
        except KeyError as exc:
            return Reply(404, _json({"error": f"not found: {exc}"}))
        except (ValueError, TypeError) as exc:
            return Reply(400, _json({"error": str(exc)}))
        return Reply(404, _json({"error": f"no test route {method} {path}"}))


def _intent_of(event: Mapping[str, Any]) -> str:
    obj = event["data"]["object"]
    if obj.get("object") == "payment_intent":
        return str(obj["id"])
    return str(obj.get("payment_intent") or "")


def _card_details(card: TestCard) -> dict[str, Any]:
    return {
        "brand": card.brand,
        "checks": {
            "address_line1_check": None,
            "address_postal_code_check": None,
            "cvc_check": "pass",
        },
        "country": card.country,
        "display_brand": card.brand,
        "exp_month": 12,
        "exp_year": 2034,
        "funding": card.funding,
        "last4": card.last4,
        "network": card.brand,
        "three_d_secure": None,
        "wallet": None,
    }


def _webhook_headers(signature: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": signature,
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }


def _request_view(record: RecordedRequest) -> dict[str, Any]:
    headers = dict(record.headers)
    if "authorization" in headers:
        headers["authorization"] = headers["authorization"][:15] + "…"
    return {
        "method": record.method,
        "path": record.path,
        "query": record.query,
        "headers": headers,
        "body": record.body.decode("utf-8", "replace"),
        "params": record.params,
        "status": record.status,
        "replayed": record.replayed,
        "dropped": record.dropped,
    }


def _control_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    if body.lstrip()[:1] == b"{":
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data
    return {k: v[0] for k, v in parse_qs(body.decode()).items()}


def _ok(payload: Any) -> Reply:
    return Reply(200, _json(payload))


def _error_reply(error: _ApiError) -> Reply:
    return Reply(error.status, _json({"error": error.error}))


def _encode_reply(reply: Reply) -> bytes:
    try:
        reason = http.HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {reply.status} {reason}"]
    headers = {
        "Content-Type": reply.content_type,
        "Content-Length": str(len(reply.body)),
        "Connection": "keep-alive",
        "Server": "nginx",
        **reply.headers,
    }
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


async def _read_request(
    reader: asyncio.StreamReader,
) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request (``None`` at a clean end of the connection)."""
    line = await reader.readline()
    if not line.strip():
        return None
    method, target, _version = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in {b"\r\n", b"\n", b""}:
            break
        name, _, value = raw.decode("latin-1").partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
    elif headers.get("content-length"):
        body = await reader.readexactly(int(headers["content-length"]))
    return method.upper(), target, headers, body


@contextlib.contextmanager
def running_stripe(
    secret_key: str = DEFAULT_SECRET_KEY,
    webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
    **options: Any,
) -> Iterator[FakeStripe]:
    """A ``FakeStripe`` serving on a loopback port (``fake.url``) for the ``with`` block."""
    fake = FakeStripe(secret_key, webhook_secret, **options)
    with fake.serve():
        yield fake


__all__ = [
    "API_VERSION",
    "DEFAULT_SECRET_KEY",
    "DEFAULT_WEBHOOK_SECRET",
    "TEST_CARDS",
    "FakeStripe",
    "Injection",
    "RecordedRequest",
    "TestCard",
    "WebhookDelivery",
    "decode_params",
    "new_id",
    "running_stripe",
    "stripe_error",
]
