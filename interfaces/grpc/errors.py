"""One error mapping: a domain error's HTTP status (the REST error model) to a gRPC status.

| REST | gRPC | for |
|---|---|---|
| 400, 413 | INVALID_ARGUMENT | bad input (REST answers bad input 400, never 422) |
| 401 | UNAUTHENTICATED | no or bad credentials |
| 402 | FAILED_PRECONDITION | insufficient credits, guard rails (violations in the message) |
| 403 | PERMISSION_DENIED | admin only, a proxy target that is not yours |
| 404 | NOT_FOUND | missing, or not yours |
| 409 | FAILED_PRECONDITION (ABORTED: still in progress; ALREADY_EXISTS: key reused) | state |
| 429 | RESOURCE_EXHAUSTED | rate limit |
| 502, 503 | UNAVAILABLE | provider, instance or store down or busy |
| 504 | DEADLINE_EXCEEDED | the instance did not answer in time |

Anything unexpected is INTERNAL (logged), never UNKNOWN.
"""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from domain.errors import (
    DomainError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    SpendingLimitExceededError,
)
from domain.money import micros_to_usd
from domain.services.payments import PaymentInProgressError

BY_STATUS = {
    400: Status.INVALID_ARGUMENT,
    401: Status.UNAUTHENTICATED,
    402: Status.FAILED_PRECONDITION,
    403: Status.PERMISSION_DENIED,
    404: Status.NOT_FOUND,
    409: Status.FAILED_PRECONDITION,
    413: Status.INVALID_ARGUMENT,
    429: Status.RESOURCE_EXHAUSTED,
    502: Status.UNAVAILABLE,
    503: Status.UNAVAILABLE,
    504: Status.DEADLINE_EXCEEDED,
}
MAX_MESSAGE = 1000


def status_of(exc: DomainError) -> Status:
    if isinstance(exc, PaymentInProgressError):
        return Status.ABORTED
    if isinstance(exc, IdempotencyConflictError):
        return Status.ALREADY_EXISTS
    status = int(getattr(exc, "status", 400))
    found = BY_STATUS.get(status)
    if found is not None:
        return found
    return Status.INVALID_ARGUMENT if status < 500 else Status.UNAVAILABLE


def message_of(exc: DomainError) -> str:
    """The REST ``detail``, with the 402 particulars spelled out (amounts in USD)."""
    if isinstance(exc, SpendingLimitExceededError):
        parts = [
            f"{v['window']}: limit {micros_to_usd(int(v['limit']))}, spent "
            f"{micros_to_usd(int(v['spent']))}, held {micros_to_usd(int(v['held']))}, "
            f"requested {micros_to_usd(int(v['requested']))}"
            for v in exc.violations
        ]
        return f"Spending limit exceeded: {'; '.join(parts)}"[:MAX_MESSAGE]
    message = exc.message
    if isinstance(exc, InsufficientCreditsError):
        amounts = [
            f"{key} {micros_to_usd(int(value))}"
            for key in ("available", "requested", "cap")
            if isinstance(value := exc.details.get(key), int)
        ]
        if amounts:
            message = f"{message} ({', '.join(amounts)} USD)"
    field = exc.details.get("field")
    invalid = status_of(exc) is Status.INVALID_ARGUMENT
    if invalid and isinstance(field, str) and field and field not in message:
        message = f"{field}: {message}"
    return message[:MAX_MESSAGE]


def to_grpc(exc: DomainError) -> GRPCError:
    return GRPCError(status_of(exc), message_of(exc))
