"""The one retry helper of the HTTP adapters (infrastructure/http_retry.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import pytest

from infrastructure.http_retry import Backoff, Retry, RetryPolicy, retry_after_seconds

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


class Sleeps(list[float]):
    async def __call__(self, delay: float) -> None:
        self.append(delay)


class GaveUpError(Exception):
    pass


def _gives_up(attempts: int) -> BaseException:
    return GaveUpError(f"after {attempts}")


@pytest.mark.parametrize(
    ("backoff", "attempt", "retry_after", "expected"),
    [
        (Backoff(jitter=None), 1, None, 0.5),
        (Backoff(jitter=None), 3, None, 2.0),
        (Backoff(jitter=None), 10, None, 8.0),  # capped at max_s
        (Backoff(jitter=lambda: 0.0), 2, None, 0.5),  # jitter scales 0.5 to 1.0
        (Backoff(jitter=lambda: 1.0), 2, None, 1.0),
        (Backoff(jitter=None), 1, 3.0, 3.0),  # at least Retry-After
        (Backoff(jitter=None), 3, 1.0, 2.0),  # never below the backoff
        (Backoff(jitter=None), 1, 300.0, 8.0),  # Retry-After capped
        (Backoff(jitter=None, retry_after_cap_s=60.0), 1, 300.0, 60.0),
        (Backoff(base_s=0.0, jitter=None), 4, None, 0.0),
    ],
)
def test_backoff_delay(
    backoff: Backoff, attempt: int, retry_after: float | None, expected: float
) -> None:
    assert backoff.delay(attempt, retry_after) == expected


def test_run_returns_the_first_result_and_sleeps_between_tries() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(4, Backoff(jitter=None), sleep=sleeps)
    seen: list[tuple[int, str, float]] = []

    async def one_try(n: int) -> str | Retry:
        return "ok" if n == 3 else Retry(f"try {n}", _gives_up)

    result = asyncio.run(
        policy.run(one_try, on_retry=lambda n, r, d: seen.append((n, r.reason, d)))
    )
    assert result == "ok"
    assert sleeps == [0.5, 1.0]
    assert seen == [(1, "try 1", 0.5), (2, "try 2", 1.0)]


def test_run_gives_up_after_max_attempts_with_the_adapters_error() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(3, Backoff(jitter=None), sleep=sleeps)
    cause = httpx.ConnectError("refused")
    tries: list[int] = []

    async def one_try(n: int) -> str | Retry:
        tries.append(n)
        return Retry("down", _gives_up, retry_after=2.0, cause=cause)

    with pytest.raises(GaveUpError, match="after 3") as caught:
        asyncio.run(policy.run(one_try))
    assert tries == [1, 2, 3]
    assert sleeps == [2.0, 2.0]  # Retry-After above the backoff of tries 1 and 2
    assert caught.value.__cause__ is cause


def test_attempts_already_made_count_to_the_bound() -> None:
    sleeps = Sleeps()
    tries: list[int] = []

    async def one_try(n: int) -> str | Retry:
        tries.append(n)
        return Retry("down", _gives_up)

    with pytest.raises(GaveUpError, match="after 4"):
        asyncio.run(RetryPolicy(4, sleep=sleeps).run(one_try, attempts_made=2))
    assert tries == [3, 4]
    assert len(sleeps) == 1


def test_a_final_error_from_a_try_is_not_retried() -> None:
    sleeps = Sleeps()

    async def one_try(_: int) -> str | Retry:
        raise GaveUpError("refused")

    with pytest.raises(GaveUpError, match="refused"):
        asyncio.run(RetryPolicy(4, sleep=sleeps).run(one_try))
    assert sleeps == []


def test_which_statuses_and_exceptions_retry() -> None:
    policy = RetryPolicy()
    assert [s for s in (200, 400, 429, 500, 502, 503, 504) if policy.retries_status(s)] == [
        429,
        502,
        503,
        504,
    ]
    assert policy.retries_exception(httpx.ReadTimeout("slow"))
    assert not policy.retries_exception(ValueError("bad"))
    narrow = RetryPolicy(retry_statuses=frozenset({503}), retry_exceptions=(httpx.ConnectError,))
    assert not narrow.retries_status(429)
    assert not narrow.retries_exception(httpx.ReadTimeout("slow"))


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-4", 0.0),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("Mon, 07 Dec 2026 12:00:30 GMT", 30.0),
        ("Mon, 07 Dec 2026 11:59:00 GMT", 0.0),  # in the past
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert retry_after_seconds(header, now=NOW) == expected
