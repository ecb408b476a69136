"""Domain errors: each carries what an interface needs to answer clearly (HTTP status, fields)."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """Base of every rule violation the domain reports."""

    status = 400
    title = "Bad request"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidAmountError(DomainError):
    """An amount is not a positive, exact, finite micro-USD value."""

    status = 400
    title = "Invalid amount"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}", field=field)


class InvalidArgumentError(DomainError):
    """A command argument is out of range or malformed."""

    status = 400
    title = "Invalid argument"


class InsufficientCreditsError(DomainError):
    """The command would take available credit below minus the overage cap."""

    status = 402
    title = "Insufficient credits"


class SpendingLimitExceededError(DomainError):
    """The command would push one or more guard-rail windows over their limit."""

    status = 402
    title = "Spending limit exceeded"

    def __init__(self, violations: list[dict[str, Any]], spent: dict[str, int]) -> None:
        names = ", ".join(v["window"] for v in violations)
        super().__init__(f"Spending limit exceeded ({names})", violations=violations, spent=spent)
        self.violations = violations
        self.spent = spent


class HoldNotFoundError(DomainError):
    """No active hold with this id."""

    status = 404
    title = "Hold not found"


class HoldConflictError(DomainError):
    """The hold cannot take this command (over-capture, or its id is already in use).

    A hold past its deadline is expired first, so commands on it get ``HoldNotFoundError``.
    """

    status = 409
    title = "Hold conflict"


class IdempotencyConflictError(DomainError):
    """An idempotency key was reused with different parameters."""

    status = 409
    title = "Idempotency key reused"


class AccountNotFoundError(DomainError):
    """No credit account for this user yet."""

    status = 404
    title = "Account not found"


class ConcurrencyError(DomainError):
    """Too many concurrent writers: the command was retried and still conflicted."""

    status = 503
    title = "Busy, retry"


class InstanceNotReachableError(DomainError):
    """The proxy's target is not one of the caller's running instances."""

    status = 404
    title = "Instance not found"


class InstancesBehindError(DomainError):
    """The instances read model could not be caught up in time: try again shortly."""

    status = 503
    title = "Instances catching up"


class NoRunningInstancesError(DomainError):
    """The caller has nothing to balance over: rent an instance first (a 4xx: their state)."""

    status = 409
    title = "No running instances"
