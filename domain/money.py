"""Money as integer micro-USD (1 USD = 1,000,000), converted exactly from decimals."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from domain.errors import InvalidAmountError

MICROS_PER_USD = 1_000_000
MAX_MICROS = 10**15  # one billion USD: anything above is a typo, not a payment


def usd_to_micros(value: str | int | Decimal, *, field: str = "amount") -> int:
    """Parse a USD decimal ("50.00", 50, Decimal) into micro-USD, exactly.

    Floats (binary fractions), non-finite values, more than 6 decimals and values above
    ``MAX_MICROS`` are refused. No ``Decimal`` arithmetic is done (its 28-digit context would
    round or overflow): the digits and exponent are read and scaled as integers.
    """
    if isinstance(value, bool | float):
        raise InvalidAmountError(field, "must be a decimal string or integer, not a float")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidAmountError(field, f"{str(value)[:40]!r} is not a decimal number") from None
    if not amount.is_finite():
        raise InvalidAmountError(field, "must be finite")
    sign, digits, exponent = amount.as_tuple()
    text = "".join(map(str, digits)).lstrip("0")
    if not text:
        return 0
    stripped = text.rstrip("0")
    exponent = int(exponent) + len(text) - len(stripped)
    if exponent < -6:
        raise InvalidAmountError(field, "has more than 6 decimal places")
    if len(stripped) + exponent > 16:  # more than 10^16 micro-USD before the exact check
        raise InvalidAmountError(field, "is too large")
    result: int = int(stripped) * 10 ** (exponent + 6)
    if result > MAX_MICROS:
        raise InvalidAmountError(field, "is too large")
    return -result if sign else result


def format_usd(micros: int) -> str:
    """Format micro-USD with exactly six decimals ("50.000000", "0.000125", "-1.500000"): exact,
    and the one rule for every amount the service answers (README "Money format")."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


micros_to_usd = format_usd  # the name the interfaces use; one format for REST, WS, MCP, gRPC, CLI
