"""Money conversions: exact decimal USD <-> integer micro-USD, refusing anything inexact."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import DomainError, InvalidAmountError
from domain.money import MAX_MICROS, MICROS_PER_USD, micros_to_usd, usd_to_micros

MAX_USD = MAX_MICROS // MICROS_PER_USD

micros = st.integers(min_value=-MAX_MICROS, max_value=MAX_MICROS)
usd_decimals = st.decimals(
    min_value=-MAX_USD, max_value=MAX_USD, places=6, allow_nan=False, allow_infinity=False
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("50.00", 50_000_000),
        ("50", 50_000_000),
        ("0.000001", 1),
        ("0.000125", 125),
        ("0", 0),
        ("-2.25", -2_250_000),
        (" 7.1 ", 7_100_000),
        ("1e3", 1_000_000_000),
        ("1.5000000", 1_500_000),  # trailing zeros are not extra precision
        ("1000000000", MAX_MICROS),  # the largest amount accepted
        ("-1000000000", -MAX_MICROS),
        (50, 50_000_000),
        (-3, -3_000_000),
        (Decimal("1.5"), 1_500_000),
        (Decimal("0.000001"), 1),
    ],
)
def test_usd_to_micros_examples(value: str | int | Decimal, expected: int) -> None:
    result = usd_to_micros(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        0.1,
        50.0,
        float("nan"),
        float("inf"),
        True,
        False,
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        Decimal("NaN"),
        Decimal("Infinity"),
        "0.0000001",
        "1.1234567",
        "-0.0000005",
        "1000000000.000001",
        "1000000001",
        "-1000000001",
        "1e10",
        "1e400",
        10**16,
        "abc",
        "",
        "   ",
        "1,00",
        "$5",
        "5 USD",
        "0x10",
        "1.2.3",
        "--1",
    ],
)
def test_usd_to_micros_refuses(value: object) -> None:
    with pytest.raises(InvalidAmountError) as info:
        usd_to_micros(value, field="price")  # type: ignore[arg-type]
    assert info.value.details["field"] == "price"
    assert str(info.value).startswith("price ")


@pytest.mark.parametrize(
    "value",
    [
        # More significant digits than Decimal's 28-digit context: must not be rounded away.
        "123456789.0000000000000000000001",
        "0.0000010000000000000000000000000000001",
        # Would underflow to zero in Decimal arithmetic.
        "1e-9999999",
        # Would raise decimal.Overflow in Decimal arithmetic.
        "1e1000000",
        "-9e999999999",
        "1" + "0" * 5000,
        Decimal("1e1000000"),
    ],
)
def test_usd_to_micros_refuses_extreme_decimals(value: str | Decimal) -> None:
    with pytest.raises(InvalidAmountError):
        usd_to_micros(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100e-8", 1),
        ("0.1e-5", 1),
        ("0E-1000000", 0),
        ("-0", 0),
        ("0.0000000", 0),
        ("1.000000000000000000000000000000000", 1_000_000),
        ("1000000000.000000000000000000000000000", MAX_MICROS),
        ("1e9", MAX_MICROS),
    ],
)
def test_usd_to_micros_exact_with_unusual_exponents(value: str, expected: int) -> None:
    assert usd_to_micros(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-1_500_000, "-1.500000"),
        (0, "0.000000"),
        (1, "0.000001"),
        (-1, "-0.000001"),
        (125, "0.000125"),
        (10, "0.000010"),
        (50_000_000, "50.000000"),
        (1_234_500, "1.234500"),
        (1_000_000, "1.000000"),
        (MAX_MICROS, "1000000000.000000"),
    ],
)
def test_micros_to_usd_examples(value: int, expected: str) -> None:
    assert micros_to_usd(value) == expected


@given(micros)
def test_micros_round_trip_through_usd(amount: int) -> None:
    text = micros_to_usd(amount)
    assert re.fullmatch(r"-?\d+\.\d{6}", text), text  # exactly six decimals, always
    assert usd_to_micros(text) == amount


@given(usd_decimals)
def test_usd_decimal_round_trip(value: Decimal) -> None:
    amount = usd_to_micros(str(value))
    assert amount == int(value.scaleb(6))
    assert usd_to_micros(value) == amount
    assert Decimal(micros_to_usd(amount)) == value


@given(usd_decimals, st.integers(min_value=7, max_value=12), st.integers(1, 9))
def test_more_than_six_decimals_is_refused(value: Decimal, places: int, digit: int) -> None:
    text = f"{value:f}"
    if "." not in text:
        text += "."
    whole, _, fraction = text.partition(".")
    precise = f"{whole}.{fraction.ljust(places - 1, '0')[: places - 1]}{digit}"
    with pytest.raises(InvalidAmountError):
        usd_to_micros(precise)


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=12))
def test_junk_strings_parse_or_raise_invalid_amount(text: str) -> None:
    """Any string is either an exact in-range amount or refused with InvalidAmountError."""
    try:
        amount = usd_to_micros(text)
    except DomainError as exc:
        if not isinstance(exc, InvalidAmountError):
            raise AssertionError(f"{text!r} raised {exc!r}") from exc
        return
    assert -MAX_MICROS <= amount <= MAX_MICROS
    assert Decimal(text.strip()) * MICROS_PER_USD == amount
