"""The gRPC edge without a server: generated code is current, one error mapping, exact money,
settings, and the CLI transport's target parsing."""

from __future__ import annotations

import ast
import math
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import (
    AccountNotFoundError,
    ConcurrencyError,
    DomainError,
    HoldConflictError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidAmountError,
    InvalidArgumentError,
    SpendingLimitExceededError,
)
from domain.money import MAX_MICROS, micros_to_usd
from domain.services.marketplace import ProviderFailedError
from domain.services.payments import PaymentInProgressError
from infrastructure.identity.auth import AuthenticationError, ForbiddenError
from infrastructure.identity.rate_limit import RateDecision
from infrastructure.proxy.forwarder import UpstreamConnectError, UpstreamTimeoutError
from infrastructure.proxy.targets import TargetRefusedError
from infrastructure.settings import ConfigError, load_settings
from interfaces.cli.client import ApiError
from interfaces.grpc.client import parse_target
from interfaces.grpc.convert import positive_usd_in, usd_in, usd_out
from interfaces.grpc.errors import message_of, status_of
from interfaces.grpc.views import usd
from interfaces.http.errors import RateLimitedError

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ROOT / "interfaces" / "grpc" / "generated"


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    """``make protos`` into a temporary folder gives what is committed (Python compared as
    syntax trees, so the formatter's version does not matter; the descriptor set byte for
    byte)."""
    sys.path.insert(0, str(ROOT / "protos"))
    try:
        import generate  # protos/generate.py: the one command `make protos` runs
    finally:
        sys.path.remove(str(ROOT / "protos"))
    generate.generate(tmp_path)
    fresh, committed = _tree(tmp_path), _tree(GENERATED)
    assert sorted(fresh) == sorted(committed), "run `make protos`"
    for name, data in fresh.items():
        if name.endswith(".py"):
            same = ast.dump(ast.parse(data)) == ast.dump(ast.parse(committed[name]))
        else:
            same = data == committed[name]
        assert same, f"{name} is stale: run `make protos`"


# ---------------------------------------------------------------- errors

SPEND = SpendingLimitExceededError(
    [{"window": "5MIN", "limit": 10_000, "spent": 5_000, "held": 0, "requested": 250_000}],
    {"5MIN": 5_000},
)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidArgumentError("bad", field="count"), Status.INVALID_ARGUMENT),
        (InvalidAmountError("amount", "must be finite"), Status.INVALID_ARGUMENT),
        (AuthenticationError("Invalid API key"), Status.UNAUTHENTICATED),
        (ForbiddenError("Admin role required"), Status.PERMISSION_DENIED),
        (TargetRefusedError("not yours"), Status.PERMISSION_DENIED),
        (AccountNotFoundError("none"), Status.NOT_FOUND),
        (InsufficientCreditsError("Insufficient credits"), Status.FAILED_PRECONDITION),
        (SPEND, Status.FAILED_PRECONDITION),
        (HoldConflictError("conflict"), Status.FAILED_PRECONDITION),
        (PaymentInProgressError("busy"), Status.ABORTED),
        (IdempotencyConflictError("reused"), Status.ALREADY_EXISTS),
        (RateLimitedError(RateDecision(3, 0, 60, False)), Status.RESOURCE_EXHAUSTED),
        (ProviderFailedError("Rent failed"), Status.UNAVAILABLE),
        (UpstreamConnectError("refused"), Status.UNAVAILABLE),
        (ConcurrencyError("busy"), Status.UNAVAILABLE),
        (UpstreamTimeoutError("slow"), Status.DEADLINE_EXCEEDED),
        (DomainError("generic"), Status.INVALID_ARGUMENT),
    ],
)
def test_one_error_mapping(error: DomainError, status: Status) -> None:
    assert status_of(error) is status
    assert status is not Status.UNKNOWN


def test_messages_carry_the_particulars() -> None:
    assert message_of(SPEND) == (
        "Spending limit exceeded: 5MIN: limit 0.010000, spent 0.005000, held 0.000000, "
        "requested 0.250000"
    )
    poor = InsufficientCreditsError(
        "Insufficient credits", available=1_500_000, requested=2 * 10**6
    )
    assert message_of(poor) == "Insufficient credits (available 1.500000, requested 2.000000 USD)"
    assert message_of(InvalidArgumentError("must be 1 to 16", field="count")).startswith("count:")


# ---------------------------------------------------------------- money


@given(st.integers(min_value=0, max_value=MAX_MICROS))
def test_every_amount_round_trips_through_the_wire(micros: int) -> None:
    wire = usd_out(micros)
    assert usd_in(wire, "amount") == micros
    assert usd(wire) == micros_to_usd(micros)


@pytest.mark.parametrize(
    ("value", "micros"), [(0.1, 100_000), (25.5, 25_500_000), (0.000001, 1), (1e3, 10**9)]
)
def test_doubles_convert_exactly(value: float, micros: int) -> None:
    assert usd_in(value, "amount") == micros


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.01, 1e-7, 0.1234567, 1e16])
def test_bad_doubles_are_refused(value: float) -> None:
    with pytest.raises(DomainError) as caught:
        usd_in(value, "amount")
    assert status_of(caught.value) is Status.INVALID_ARGUMENT


def test_zero_is_not_positive() -> None:
    assert usd_in(0.0, "amount") == 0
    with pytest.raises(InvalidArgumentError):
        positive_usd_in(0.0, "amount")
    assert Decimal(repr(usd_out(123_456_789))) == Decimal("123.456789")


# ---------------------------------------------------------------- settings, CLI


def test_grpc_settings() -> None:
    default = load_settings({}, env_file=None)
    assert (default.grpc.enabled, default.grpc.port, default.grpc.tls_cert) == (True, 9090, "")
    tuned = load_settings({"GRPC_PORT": "7000", "GRPC_ENABLED": "off"}, env_file=None)
    assert (tuned.grpc.enabled, tuned.grpc.port) == (False, 7000)
    for env, name in (
        ({"GRPC_PORT": "nine"}, "GRPC_PORT"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT"),
        ({"GRPC_PORT": "8080"}, "GRPC_PORT"),
        ({"GRPC_ENABLED": "maybe"}, "GRPC_ENABLED"),
        ({"GRPC_TLS_CERT": "/nonexistent.pem"}, "GRPC_TLS_CERT"),
        ({"GRPC_TLS_CERT": __file__}, "GRPC_TLS_KEY"),
    ):
        with pytest.raises(ConfigError, match=name):
            load_settings(env, env_file=None)
    both = load_settings({"GRPC_TLS_CERT": __file__, "GRPC_TLS_KEY": __file__}, env_file=None)
    assert both.grpc.tls_key == __file__


def test_grpc_target_parsing() -> None:
    assert parse_target("localhost:9090") == ("localhost", 9090)
    assert parse_target("gpu-proxy.example") == ("gpu-proxy.example", 9090)
    assert parse_target("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ApiError):
        parse_target("host:port")
