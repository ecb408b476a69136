"""The AfterDark card processor (``domain.ports.payments.CardProcessor`` on httpx).

AfterDark's API is not published: this adapter follows the contract we assume and wrote down
in ``docs/afterdark-contract.md`` (``POST /v1/charges``, ``GET /v1/charges/{id}``,
``POST /v1/charges/{id}/refunds``; Bearer key; ``Idempotency-Key`` on every POST; integer
cents; errors ``{"error": {"code", "message"}}``).

No card data is ever sent: a ``payment_method`` that looks like a card number (12-19 digits,
spaces or dashes allowed) is refused before any request (``InvalidPaymentRequestError``, code
``raw_card_data_refused``).

Errors: 402 → ``CardDeclinedError``; 400, 409, other 4xx and 404 (code ``not_found``) →
``InvalidPaymentRequestError``; 401/403 → ``PaymentAuthError``; 429, 5xx, network errors and
timeouts are retried (``retries`` more tries, exponential backoff with jitter, at least
``Retry-After``), always with the same idempotency key, then ``PaymentUnavailableError``. A 2xx
that is not the contract's shape is a plain ``PaymentError`` (code ``bad_response``). The API
key travels only in the ``Authorization`` header, never in a ``repr``, an error or a log line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx

from domain.ports.payments import (
    CardDeclinedError,
    ChargeRequest,
    ChargeResult,
    ChargeStatus,
    InvalidPaymentRequestError,
    PaymentAuthError,
    PaymentError,
    PaymentUnavailableError,
    RefundResult,
)
from infrastructure.http_retry import Backoff, Retry, RetryPolicy, retry_after_seconds

if TYPE_CHECKING:
    from typing import Literal

    from domain.ports.payments import CardProcessor

log = logging.getLogger(__name__)

PROCESSOR: Final = "afterdark"
DEFAULT_BASE_URL: Final = "https://billing.afterdarksys.com"
USER_AGENT: Final = "aiserve-gpuproxy/0.1 (afterdark adapter)"
BACKOFF_MAX_S: Final = 8.0
RETRY_STATUSES: Final = frozenset({429, *range(500, 600)})
CHARGE_STATUSES: Final = frozenset({"succeeded", "pending", "failed"})
REFUND_STATUSES: Final = frozenset({"succeeded", "pending", "failed"})
LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1"})

_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
_CURRENCY = re.compile(r"[a-z]{3}")
_CARD_LIKE = re.compile(r"[0-9 -]+")


def looks_like_card_number(value: str) -> bool:
    """12-19 digits, possibly grouped with spaces or dashes: a PAN, never a token."""
    digits = sum(c.isdigit() for c in value)
    return bool(_CARD_LIKE.fullmatch(value.strip())) and 12 <= digits <= 19


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_fields(response: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` from an error answer; a non-JSON body gives ``http_<status>``."""
    body = _body(response)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"http_{response.status_code}")
        message = str(error.get("message") or code)[:300]
        return code, message
    return f"http_{response.status_code}", f"HTTP {response.status_code}"


def _bad_response(what: str) -> PaymentError:
    return PaymentError(PROCESSOR, f"malformed answer: {what}", code="bad_response")


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _charge_result(body: Any) -> ChargeResult:
    if not isinstance(body, dict):
        raise _bad_response("not a charge")
    charge_id, status = body.get("id"), body.get("status")
    amount, currency = _int(body.get("amount_cents")), body.get("currency")
    if not isinstance(charge_id, str) or not _ID.fullmatch(charge_id):
        raise _bad_response("charge id")
    if status not in CHARGE_STATUSES:
        raise _bad_response(f"charge status {str(status)[:40]!r}")
    if amount is None or amount < 0 or not isinstance(currency, str):
        raise _bad_response("charge amount")
    card = body.get("card")
    brand = last4 = ""
    if isinstance(card, dict):
        brand = str(card.get("brand") or "").lower()
        last4 = str(card.get("last4") or "")
        if not (len(last4) == 4 and last4.isdigit()):
            last4 = ""
    checked: ChargeStatus = status
    return ChargeResult(
        external_id=charge_id,
        status=checked,
        amount_cents=amount,
        currency=currency.lower(),
        failure_code=str(body.get("failure_code") or ""),
        failure_message=str(body.get("failure_message") or "")[:300],
        card_brand=brand,
        card_last4=last4,
        charge_id=charge_id,
    )


def _refund_result(body: Any) -> RefundResult:
    if not isinstance(body, dict):
        raise _bad_response("not a refund")
    refund_id, status, amount = body.get("id"), body.get("status"), _int(body.get("amount_cents"))
    if not isinstance(refund_id, str) or not _ID.fullmatch(refund_id):
        raise _bad_response("refund id")
    if status not in REFUND_STATUSES:
        raise _bad_response(f"refund status {str(status)[:40]!r}")
    if amount is None or amount < 0:
        raise _bad_response("refund amount")
    checked: Literal["succeeded", "pending", "failed"] = status
    return RefundResult(external_id=refund_id, status=checked, amount_cents=amount)


def _check_id(value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidPaymentRequestError(PROCESSOR, "not an AfterDark id", code="invalid_id")
    return value


def _check_key(value: str) -> str:
    if not isinstance(value, str) or not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidPaymentRequestError(
            PROCESSOR, "idempotency key: 1-255 printable ASCII characters", code="invalid_key"
        )
    return value


def _check_amount(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidPaymentRequestError(
            PROCESSOR, "amount_cents must be a positive int", code="invalid_amount"
        )
    return value


class AfterDarkGateway:
    """AfterDark behind the card-processor port. See the module docstring."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 15.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``retries``: extra tries after the first; the wait before try ``n + 1`` is
        ``backoff_s * 2 ** (n - 1)`` (at most 8 s) scaled by 0.5-1.0 at random, and at least
        the server's ``Retry-After``. ``base_url`` must be https (http only on loopback).
        """
        url = httpx.URL(base_url.rstrip("/"))
        secure = url.scheme == "https" or (url.scheme == "http" and url.host in LOOPBACK_HOSTS)
        if not url.host or not secure:
            raise ValueError("base_url must be an https URL (http only on loopback)")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self._base_url = str(url)
        self._retries = retries
        self._retry = RetryPolicy(
            retries + 1,
            Backoff(backoff_s, BACKOFF_MAX_S, retry_after_cap_s=BACKOFF_MAX_S),
            retry_statuses=RETRY_STATUSES,
        )
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(transport=transport, timeout=timeout, headers=headers)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> AfterDarkGateway:
        """Key from ``AFTERDARK_API_KEY``, origin from ``AFTERDARK_API_URL``."""
        source = os.environ if env is None else env
        return cls(
            source.get("AFTERDARK_API_KEY", ""),
            base_url=source.get("AFTERDARK_API_URL") or DEFAULT_BASE_URL,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"AfterDarkGateway(base_url={self._base_url!r})"

    @property
    def name(self) -> str:
        return PROCESSOR

    async def __aenter__(self) -> AfterDarkGateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def charge(self, request: ChargeRequest) -> ChargeResult:
        """``POST /v1/charges`` once per ``request.idempotency_key`` (retries reuse it)."""
        amount = _check_amount(request.amount_cents)
        key = _check_key(request.idempotency_key)
        token = request.payment_method
        if not isinstance(token, str) or not token.strip() or len(token) > 255:
            raise InvalidPaymentRequestError(
                PROCESSOR, "payment_method must be a processor token", code="invalid_token"
            )
        if looks_like_card_number(token):
            raise InvalidPaymentRequestError(
                PROCESSOR, "refusing to send card data: pass a token", code="raw_card_data_refused"
            )
        currency = request.currency.lower()
        if not _CURRENCY.fullmatch(currency):
            raise InvalidPaymentRequestError(PROCESSOR, "bad currency", code="invalid_currency")
        if not request.payment_id:
            raise InvalidPaymentRequestError(PROCESSOR, "payment_id is required", code="invalid")
        body: dict[str, Any] = {
            "amount_cents": amount,
            "currency": currency,
            "payment_token": token,
            "reference": request.payment_id,
            "description": request.description,
            "metadata": {"user_id": request.user_id},
        }
        response = await self._send("POST", "/v1/charges", op="charge", json=body, key=key)
        return _charge_result(_body(response))

    async def status(self, external_id: str) -> ChargeResult:
        """``GET /v1/charges/{id}``; an unknown id is ``InvalidPaymentRequestError`` not_found."""
        charge_id = _check_id(external_id)
        response = await self._send("GET", f"/v1/charges/{charge_id}", op="status")
        return _charge_result(_body(response))

    async def refund(
        self, external_id: str, amount_cents: int, *, idempotency_key: str
    ) -> RefundResult:
        """``POST /v1/charges/{id}/refunds`` for ``amount_cents`` (partial refunds allowed)."""
        charge_id = _check_id(external_id)
        body = {"amount_cents": _check_amount(amount_cents)}
        response = await self._send(
            "POST",
            f"/v1/charges/{charge_id}/refunds",
            op="refund",
            json=body,
            key=_check_key(idempotency_key),
        )
        return _refund_result(_body(response))

    async def _send(
        self,
        method: str,
        path: str,
        *,
        op: str,
        json: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> httpx.Response:
        """One call with bounded retries; returns a 2xx answer or raises the mapped error."""
        headers = {"Idempotency-Key": key} if key is not None else {}

        async def one_try(_: int) -> httpx.Response | Retry:
            try:
                response = await self._client.request(
                    method, self._base_url + path, json=json, headers=headers
                )
            except httpx.TransportError as exc:
                return _unavailable(op, type(exc).__name__, "unavailable", 0)
            status = response.status_code
            if 200 <= status < 300:
                return response
            if not self._retry.retries_status(status):
                raise _client_error(op, response)
            code, message = _error_fields(response)
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            return _unavailable(op, f"HTTP {status} {message}", code, status, retry_after)

        def waiting(attempt: int, retry: Retry, _: float) -> None:
            log.warning(
                "afterdark %s: %s; try %d of %d", op, retry.reason, attempt + 1, self._retries + 1
            )

        return await self._retry.run(one_try, on_retry=waiting)


def _unavailable(
    op: str, reason: str, code: str, status: int, retry_after: float | None = None
) -> Retry:
    """A try that may be repeated; ``PaymentUnavailableError`` once none is left."""
    return Retry(
        reason,
        lambda attempts: PaymentUnavailableError(
            PROCESSOR, f"{op}: {reason} after {attempts} attempts", code=code, status=status
        ),
        retry_after=retry_after,
    )


def _client_error(op: str, response: httpx.Response) -> PaymentError:
    status = response.status_code
    code, message = _error_fields(response)
    text = f"{op}: {message}"
    if status == 402:
        return CardDeclinedError(PROCESSOR, text, code=code, status=status)
    if status in {401, 403}:
        return PaymentAuthError(PROCESSOR, text, code=code, status=status)
    if status == 404:
        return InvalidPaymentRequestError(PROCESSOR, text, code="not_found", status=status)
    return InvalidPaymentRequestError(PROCESSOR, text, code=code, status=status)


if TYPE_CHECKING:

    def _conforms(gateway: AfterDarkGateway) -> CardProcessor:
        return gateway
