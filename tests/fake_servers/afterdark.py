"""A fake AfterDark billing API implementing ``docs/afterdark-contract.md`` exactly.

``FakeAfterDark`` is a plain ASGI app; ``with running_afterdark() as fake:`` serves it on a
loopback port (uvicorn in a thread, as ``tests/fake_servers/vastai.py``) and ``fake.url`` is
the base URL. Every request is recorded in ``fake.requests`` (so tests can check that no card
data ever arrives).

Routes: ``POST /v1/charges``, ``GET /v1/charges/{id}``, ``POST /v1/charges/{id}/refunds``;
anything else 404 ``not_found`` (a known path with another method: 405). Auth first:
``Authorization: Bearer <api_key>`` or 401 ``unauthorized``. Every POST needs an
``Idempotency-Key``: the same key with the same method, path and body replays the stored
answer (``Idempotent-Replayed: true``), anything else under that key is 409
``idempotency_key_reused``; only 2xx and 402 answers are stored.

Test tokens: ``tok_ok`` / ``tok_visa`` (succeeds, visa 4242), ``tok_mastercard`` (succeeds,
mastercard 4444), ``tok_decline`` (402 ``card_declined``) and ``tok_insufficient_funds`` (402
``insufficient_funds``), both leaving a failed charge; ``tok_pending`` (pending until
``settle(id, "succeeded" | "failed")``); any other token: 400 ``invalid_payment_token``.

Failure injection: ``fail_next(n, kind, method=None, path=None)`` for the next ``n`` matching
requests: ``http500``, ``http502``, ``http503``, ``http429`` answer before anything happens
(the 429 with ``Retry-After: 0``); ``lost`` processes the request (and stores it for replay),
then answers 502; ``drop`` processes it, then closes the connection mid-answer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from tests.fake_servers.serving import serve_asgi

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_API_KEY: Final = "ad_test_key"
MAX_AMOUNT_CENTS: Final = 99_999_999
CHARGE_FIELDS: Final = frozenset(
    {"amount_cents", "currency", "payment_token", "reference", "description", "metadata"}
)
CARD_FIELDS: Final = frozenset(
    {"card", "number", "card_number", "cvc", "cvv", "exp_month", "exp_year"}
)
# token → (outcome, decline code or "", brand, last4)
TEST_TOKENS: Final[dict[str, tuple[str, str, str, str]]] = {
    "tok_ok": ("succeeded", "", "visa", "4242"),
    "tok_visa": ("succeeded", "", "visa", "4242"),
    "tok_mastercard": ("succeeded", "", "mastercard", "4444"),
    "tok_decline": ("failed", "card_declined", "visa", "0002"),
    "tok_insufficient_funds": ("failed", "insufficient_funds", "visa", "9995"),
    "tok_pending": ("pending", "", "visa", "3220"),
}
DECLINE_MESSAGES: Final = {
    "card_declined": "Your card was declined.",
    "insufficient_funds": "Your card has insufficient funds.",
    "expired_card": "Your card has expired.",
}
FAILURE_KINDS: Final = frozenset({"http500", "http502", "http503", "http429", "lost", "drop"})


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Failure:
    kind: str
    count: int
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or path.startswith(self.path)
        )


@dataclass
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(code)
        self.reply = _json_reply(status, {"error": {"code": code, "message": message, **extra}})


class _DropConnectionError(Exception):
    """Raised after the response started: uvicorn then closes the connection."""


class _QuietDrops(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DropConnectionError)


def _json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, json.dumps(payload).encode())


def _digits(value: str) -> int:
    return sum(c.isdigit() for c in value)


def _card_like(value: str) -> bool:
    stripped = value.strip()
    return (
        bool(stripped)
        and all(c.isdigit() or c in " -" for c in stripped)
        and (12 <= _digits(stripped) <= 19)
    )


class FakeAfterDark:
    """The assumed AfterDark API in memory. See the module docstring."""

    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        self.api_key = api_key
        self.charges: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.requests: list[RecordedRequest] = []
        self.failures: list[Failure] = []
        self.replays = 0
        self._idempotency: dict[tuple[str, str], tuple[str, Reply]] = {}
        self._counter = 0
        self._url: str | None = None
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------ test API

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake AfterDark API is not being served")
        return self._url

    @property
    def charge_count(self) -> int:
        return len(self.charges)

    def settle(self, charge_id: str, outcome: str, *, failure_code: str = "card_declined") -> None:
        """Finish a pending charge: ``succeeded`` or ``failed`` (with ``failure_code``)."""
        if outcome not in {"succeeded", "failed"}:
            raise ValueError("outcome must be 'succeeded' or 'failed'")
        with self._lock:
            charge = self.charges[charge_id]
            if charge["status"] != "pending":
                raise ValueError(f"charge {charge_id} is {charge['status']}, not pending")
            charge["status"] = outcome
            if outcome == "failed":
                charge["failure_code"] = failure_code
                charge["failure_message"] = DECLINE_MESSAGES.get(failure_code, failure_code)

    def fail_next(
        self,
        n: int = 1,
        kind: str = "http500",
        *,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """The next ``n`` requests matching ``method`` / ``path`` (a prefix) fail with ``kind``."""
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        with self._lock:
            self.failures.append(Failure(kind, n, method, path))

    def requests_to(self, method: str, path_prefix: str) -> list[RecordedRequest]:
        with self._lock:
            return [
                r for r in self.requests if r.method == method and r.path.startswith(path_prefix)
            ]

    # ------------------------------------------------------------------------ serving

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1") -> Iterator[str]:
        """Serve on a free loopback port (uvicorn in a thread); yields the base URL."""
        with serve_asgi(self, name="fake-afterdark", host=host, quiet=_QuietDrops()) as url:
            self._url = url
            try:
                yield url
            finally:
                self._url = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method = str(scope["method"]).upper()
        path = str(scope["path"]).rstrip("/") or "/"
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        reply = self.handle(method, path, headers, body)
        if reply is None:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000")],
                }
            )
            raise _DropConnectionError
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(reply.body)).encode()),
                    *reply.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> Reply | None:
        """One request → its reply (``None``: drop the connection)."""
        with self._lock:
            self.requests.append(RecordedRequest(method, path, dict(headers), body))
            failure = self._take_failure(method, path)
            if failure is not None and failure.kind.startswith("http"):
                status = int(failure.kind[4:])
                code = "rate_limited" if status == 429 else "server_error"
                reply = _ApiError(status, code, f"injected {status}").reply
                if status == 429:
                    reply.headers = ((b"retry-after", b"0"),)
                return reply
            try:
                reply = self._route(method, path, headers, body)
            except _ApiError as exc:
                reply = exc.reply
            if failure is not None and failure.kind == "lost":
                return Reply(502, b"<html><body>502 Bad Gateway</body></html>")
            if failure is not None and failure.kind == "drop":
                return None
            return reply

    def _take_failure(self, method: str, path: str) -> Failure | None:
        for failure in self.failures:
            if failure.matches(method, path):
                failure.count -= 1
                if failure.count <= 0:
                    self.failures.remove(failure)
                return failure
        return None

    # ------------------------------------------------------------------------ API

    def _route(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        parts = [p for p in path.split("/") if p]
        if (
            parts[:2] != ["v1", "charges"]
            or len(parts) > 4
            or (len(parts) == 4 and parts[3] != "refunds")
        ):
            raise _ApiError(404, "not_found", f"No route for {method} {path}")
        allowed = {2: "POST", 3: "GET", 4: "POST"}[len(parts)]
        if method != allowed:
            raise _ApiError(405, "method_not_allowed", f"{method} is not allowed here")
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] != self.api_key:
            raise _ApiError(401, "unauthorized", "Invalid or missing API key.")
        if method == "GET":
            return _json_reply(200, self._charge(parts[2]))
        key = headers.get("idempotency-key", "")
        if not key or len(key) > 255:
            raise _ApiError(400, "idempotency_key_required", "Send an Idempotency-Key header.")
        try:
            request = json.loads(body) if body else None
        except ValueError:
            raise _ApiError(400, "invalid_request", "The body is not JSON.") from None
        fingerprint = json.dumps([method, path, request], sort_keys=True)
        stored = self._idempotency.get((self.api_key, key))
        if stored is not None:
            if stored[0] != fingerprint:
                raise _ApiError(
                    409,
                    "idempotency_key_reused",
                    "This Idempotency-Key was used with a different request.",
                )
            self.replays += 1
            original = stored[1]
            return Reply(original.status, original.body, ((b"idempotent-replayed", b"true"),))
        try:
            reply = (
                self._create_charge(request) if len(parts) == 2 else self._refund(parts[2], request)
            )
        except _ApiError as exc:
            if exc.reply.status == 402:
                self._idempotency[(self.api_key, key)] = (fingerprint, exc.reply)
            raise
        self._idempotency[(self.api_key, key)] = (fingerprint, reply)
        return reply

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter:012x}"

    def _charge(self, charge_id: str) -> dict[str, Any]:
        charge = self.charges.get(charge_id)
        if charge is None:
            raise _ApiError(404, "not_found", f"No such charge: {charge_id}")
        return dict(charge, card=dict(charge["card"]) if charge["card"] else None)

    def _create_charge(self, request: Any) -> Reply:
        amount, reference, description, metadata, token = _validate_charge(request)
        outcome, decline, brand, last4 = TEST_TOKENS[token]
        charge: dict[str, Any] = {
            "id": self._next_id("ch"),
            "object": "charge",
            "status": outcome,
            "amount_cents": amount,
            "amount_refunded_cents": 0,
            "currency": "usd",
            "reference": reference,
            "description": description,
            "metadata": dict(metadata),
            "failure_code": decline or None,
            "failure_message": DECLINE_MESSAGES.get(decline) if decline else None,
            "card": {"brand": brand, "last4": last4},
            "created": int(time.time()),
        }
        self.charges[charge["id"]] = charge
        if outcome == "failed":
            raise _ApiError(402, decline, DECLINE_MESSAGES[decline], charge_id=charge["id"])
        return _json_reply(201, self._charge(charge["id"]))

    def _refund(self, charge_id: str, request: Any) -> Reply:
        charge = self.charges.get(charge_id)
        if charge is None:
            raise _ApiError(404, "not_found", f"No such charge: {charge_id}")
        if not isinstance(request, dict) or set(request) != {"amount_cents"}:
            raise _ApiError(400, "invalid_request", "The body must be {amount_cents}.")
        amount = request["amount_cents"]
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
            raise _ApiError(400, "invalid_request", "amount_cents must be a positive integer.")
        if charge["status"] != "succeeded":
            raise _ApiError(409, "charge_not_refundable", f"The charge is {charge['status']}.")
        if amount > charge["amount_cents"] - charge["amount_refunded_cents"]:
            raise _ApiError(
                400, "amount_exceeds_refundable", "The amount exceeds what is left to refund."
            )
        charge["amount_refunded_cents"] += amount
        refund: dict[str, Any] = {
            "id": self._next_id("rf"),
            "object": "refund",
            "charge_id": charge_id,
            "status": "succeeded",
            "amount_cents": amount,
            "created": int(time.time()),
        }
        self.refunds[refund["id"]] = refund
        return _json_reply(201, refund)


def _validate_charge(request: Any) -> tuple[int, str, str, dict[str, str], str]:
    """A ``POST /v1/charges`` body → (amount, reference, description, metadata, token)."""
    if not isinstance(request, dict):
        raise _ApiError(400, "invalid_request", "The body must be a JSON object.")
    if CARD_FIELDS & set(request):
        raise _ApiError(400, "raw_card_data_refused", "Card data is never accepted here.")
    unknown = set(request) - CHARGE_FIELDS
    if unknown:
        raise _ApiError(400, "unknown_parameter", f"Unknown parameter: {sorted(unknown)[0]}")
    amount = request.get("amount_cents")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise _ApiError(400, "invalid_request", "amount_cents must be an integer.")
    if not 1 <= amount <= MAX_AMOUNT_CENTS:
        raise _ApiError(400, "invalid_request", "amount_cents is out of range.")
    if request.get("currency") != "usd":
        raise _ApiError(400, "unsupported_currency", "Only usd is supported.")
    reference = request.get("reference")
    if not isinstance(reference, str) or not 1 <= len(reference) <= 255:
        raise _ApiError(400, "invalid_request", "reference: 1-255 characters.")
    description = request.get("description", "")
    if not isinstance(description, str) or len(description) > 1000:
        raise _ApiError(400, "invalid_request", "description: at most 1000 characters.")
    metadata = request.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _ApiError(400, "invalid_request", "metadata values must be strings.")
    token = request.get("payment_token")
    if not isinstance(token, str):
        raise _ApiError(400, "invalid_request", "payment_token is required.")
    if _card_like(token):
        raise _ApiError(400, "raw_card_data_refused", "Card data is never accepted here.")
    if token not in TEST_TOKENS:
        raise _ApiError(400, "invalid_payment_token", "No such payment token.")
    return amount, reference, description, dict(metadata), token


@contextlib.contextmanager
def running_afterdark(api_key: str = DEFAULT_API_KEY) -> Iterator[FakeAfterDark]:
    """A ``FakeAfterDark`` served on a loopback port (``fake.url``)."""
    fake = FakeAfterDark(api_key)
    with fake.serve():
        yield fake


__all__ = [
    "CARD_FIELDS",
    "DEFAULT_API_KEY",
    "TEST_TOKENS",
    "FakeAfterDark",
    "RecordedRequest",
    "running_afterdark",
]
