"""Card numbers (PANs) in free text: found so that they are refused before anything stores them.

A card number here is 13 to 19 digits, first digit 2 to 6 (the card networks' ranges), passing
the Luhn check, written whole or in groups of up to 6 digits joined by single spaces or dashes
(``4012 8888 8888 1881``, ``3782-822463-10005``), and not glued to other letters or digits
(``pm_4012888888881881`` is one; a hex hash whose digits run into letters is not). UUIDs
(groups of 8 and 12) and epoch timestamps (first digit 1) do not match.
"""

from __future__ import annotations

import re

from domain.errors import DomainError

_ANY = re.compile(r"[0-9][0-9 \-]{12}")  # 13 digits, spaces or dashes: a quick first test
_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9]+(?:[ \-][0-9]+)*(?![0-9A-Za-z])")
_SEPARATOR = re.compile(r"[ \-]")
_MIN, _MAX = 13, 19


class CardNumberInTextError(DomainError):
    """A free-text value holds what looks like a card number."""

    status = 400
    title = "Card number not accepted"


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _is_pan(digits: str) -> bool:
    return _MIN <= len(digits) <= _MAX and digits[0] in "23456" and luhn_valid(digits)


def _candidates(groups: list[str]) -> list[str]:
    """Each group alone, and each run of adjacent groups of at most 6 digits, joined."""
    found = list(groups)
    for start in range(len(groups)):
        joined = ""
        for group in groups[start:]:
            if len(group) > 6 or len(joined) + len(group) > _MAX:
                break
            joined += group
            if joined != group:
                found.append(joined)
    return found


def contains_pan(text: str) -> bool:
    """Whether ``text`` holds something shaped like a card number."""
    if len(text) < _MIN or _ANY.search(text) is None:
        return False
    for run in _RUN.finditer(text):
        if sum(c.isdigit() for c in run.group()) < _MIN:
            continue
        if any(_is_pan(c) for c in _candidates(_SEPARATOR.split(run.group()))):
            return True
    return False


def refuse_pan(value: str, field: str) -> str:
    """``value`` unchanged, or ``CardNumberInTextError`` naming ``field`` (never the value)."""
    if contains_pan(value):
        raise CardNumberInTextError(
            f"{field} looks like it holds a card number; card numbers are never accepted "
            "here (pay with a payment method token such as card:pm_…)",
            field=field,
        )
    return value
