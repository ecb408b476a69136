"""One error shape everywhere: RFC 9457 problem details plus the seed's ``error`` field."""

from __future__ import annotations

import logging
import traceback
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from domain.errors import DomainError, SpendingLimitExceededError
from domain.money import micros_to_usd
from infrastructure.identity.auth_throttle import TooManyAttemptsError
from infrastructure.identity.rate_limit import RateDecision
from interfaces.http.unavailable import RETRY_AFTER_SECONDS, store_unavailable

log = logging.getLogger("aiserve.http")
PROBLEM = "application/problem+json"


class RateLimitedError(DomainError):
    status = 429
    title = "Rate limit exceeded"

    def __init__(self, decision: RateDecision) -> None:
        super().__init__("Rate limit exceeded")
        self.decision = decision


def problem_body(status: int, what: str, message: str, **extra: Any) -> dict[str, Any]:
    """An ``about:blank`` problem: ``title`` is the status phrase (RFC 9457 §4.2.1), the
    specific words (``what``, e.g. "Model not found") go into ``detail``; ``error`` (the seed's
    field) stays the message."""
    phrase = status_phrase(status)
    return {
        "type": "about:blank",
        "title": phrase,
        "status": status,
        "detail": problem_detail(phrase, what, message),
        "error": message or what,
        **extra,
    }


def problem_detail(phrase: str, what: str, message: str) -> str:
    """``message``, led by ``what`` unless it says nothing more than the phrase or message."""
    if not message:
        return what or phrase
    if not what or what.lower() == phrase.lower() or what.lower() in message.lower():
        return message
    return f"{what}: {message}"


def problem(
    status: int, what: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response[dict[str, Any]]:
    body = problem_body(status, what, detail, **extra)
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers or {})


def spending_body(exc: SpendingLimitExceededError) -> dict[str, Any]:
    return {
        "violations": [
            {
                "window": v["window"],
                "limit": micros_to_usd(v["limit"]),
                "spent": micros_to_usd(v["spent"]),
                "held": micros_to_usd(v["held"]),
                "requested": micros_to_usd(v["requested"]),
            }
            for v in exc.violations
        ],
        "spent": {k: micros_to_usd(v) for k, v in exc.spent.items()},
    }


def guardrail_headers(spent: dict[str, int], *, exceeded: bool) -> dict[str, str]:
    headers = {"X-GuardRails-Enabled": "true"}
    if exceeded:
        headers["X-GuardRails-Exceeded"] = "true"
    headers.update({f"X-GuardRails-{k}": micros_to_usd(v) for k, v in spent.items()})
    return headers


def on_domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[dict[str, Any]]:
    if isinstance(exc, SpendingLimitExceededError):
        return problem(
            402,
            exc.title,
            "Spending limit exceeded",
            headers=guardrail_headers(exc.spent, exceeded=True),
            **spending_body(exc),
        )
    if isinstance(exc, RateLimitedError):
        headers = {**exc.decision.headers(), "Retry-After": str(exc.decision.retry_after)}
        return problem(429, exc.title, exc.message, headers=headers)
    details = {k: v for k, v in exc.details.items() if isinstance(v, str | int | bool)}
    amounts = {"available", "cap", "requested", "remaining"}
    for key in amounts & details.keys():
        details[key] = micros_to_usd(int(details[key]))
    extra: dict[str, str] | None = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if isinstance(exc, TooManyAttemptsError):
        extra = {"Retry-After": str(exc.retry_after)}
    elif exc.status == 503:  # e.g. a read model catching up: a client may retry shortly
        extra = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    return problem(exc.status, exc.title, exc.message, headers=extra, **details)


def on_validation_error(
    _: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    errors = exc.extra if isinstance(exc.extra, list) else []
    fields = [
        {"field": str(e.get("key", "")), "message": str(e.get("message", ""))}
        for e in errors
        if isinstance(e, dict)
    ]
    names = ", ".join(f["field"] for f in fields if f["field"])
    detail = f"Invalid request: {names}" if names else (exc.detail or "Invalid request")
    return problem(400, "Bad request", detail, errors=fields)


def on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    headers = dict(exc.headers or {})
    return problem(exc.status_code, "", str(exc.detail), headers=headers)


def on_too_deep(_: Request[Any, Any, Any], __: RecursionError) -> Response[dict[str, Any]]:
    return problem(400, "Bad request", "Request body is nested too deeply")


def make_internal_handler(developer_mode: bool) -> Any:
    def on_internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        if store_unavailable(exc):  # PostgreSQL/PgBouncer/Redis restarting: retry later
            log.warning(
                "%s %s: a store is unreachable (%s); answered 503",
                request.method,
                request.url.path,
                type(exc).__name__,
            )
            return problem(
                503,
                "Service unavailable",
                "A backing store is briefly unreachable; retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        log.error(
            "unhandled error on %s %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc_info=exc,
        )
        extra: dict[str, Any] = {}
        if developer_mode:
            extra["traceback"] = traceback.format_exception(exc)
        return problem(500, "Internal server error", "Internal server error", **extra)

    return on_internal_error


def status_phrase(status: int) -> str:
    """The reason phrase of ``status`` (RFC 9110 §15), "Error" for an unregistered code."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
