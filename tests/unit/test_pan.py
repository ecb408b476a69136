"""Card numbers in free text (``domain.pan``): what is found, and what is left alone."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.pan import CardNumberInTextError, contains_pan, luhn_valid, refuse_pan

CARDS = [
    "4012888888881881",  # Visa
    "5555555555554444",  # Mastercard
    "2223003122003222",  # Mastercard 2-series
    "378282246310005",  # Amex
    "6011111111111117",  # Discover
    "4222222222222",  # Visa, 13 digits
    "6250941006528599",  # UnionPay
]


@pytest.mark.parametrize("card", CARDS)
def test_card_numbers_are_found_however_written(card: str) -> None:
    spaced = " ".join(card[i : i + 4] for i in range(0, len(card), 4))
    dashed = spaced.replace(" ", "-")
    for text in (
        card,
        spaced,
        dashed,
        f"card:pm_{card}",
        f"refund for {spaced}, thanks",
        f"order 12 {card} exp 12/27",
        f"{card} 1227 123",  # number, expiry and CVC in one run
    ):
        assert contains_pan(text), text


def test_amex_grouping_is_found() -> None:
    assert contains_pan("3782 822463 10005")
    assert contains_pan("3782-822463-10005")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "4012888888881882",  # Luhn fails
        "1733580000123",  # an epoch in milliseconds: first digit 1
        "0000000000000000",
        "00000000-0000-0000-0000-000000000000",
        "12345678-1234-5678-1234-567812345678",  # a UUID of digits only
        "4012888888881881999",  # 19 digits, Luhn fails
        "40128888888818810000",  # 20 digits: too long to be one
        "tok4012888888881881",  # glued to letters: part of a token
        "0xab4012888888881881cd",
        "4012 8888",
        "pm_card_visa",
        "auto-6f1f6d0e-3c8a-4f55-9a51-0b7f3e2d9c41",
        "10.00",
        "phone +1 415 555 0100",
    ],
)
def test_other_text_is_left_alone(text: str) -> None:
    assert not contains_pan(text)


@given(st.uuids())
def test_no_uuid_is_a_card_number(value: uuid.UUID) -> None:
    assert not contains_pan(str(value))
    assert not contains_pan(f"auto-{value}")


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_refuse_pan_names_the_field_and_never_echoes_the_value() -> None:
    assert refuse_pan("weekly top-up", "reason") == "weekly top-up"
    with pytest.raises(CardNumberInTextError) as caught:
        refuse_pan("pay 4012 8888 8888 1881", "reason")
    assert caught.value.status == 400
    assert caught.value.details["field"] == "reason"
    assert "1881" not in caught.value.message
