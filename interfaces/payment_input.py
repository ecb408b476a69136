"""Reading a payment request's headers safely: processor choice and payment method.

``X-Preferred-Payment`` carries ``card:pm_…`` (a processor token), ``crypto:NETWORK:WALLET``
(or ``crypto:NETWORK:TOKEN:WALLET``) or, from the seed, ``card:NUMBER:MM/YY:CVC``. A raw card
number is refused unless Stripe is in test mode and the number is one of Stripe's documented
test cards, which map to their test payment methods. The number and CVC are never kept,
echoed in an error or logged: only the brand and last four digits leave this module.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from domain.errors import InvalidArgumentError
from domain.pan import refuse_pan
from infrastructure.payments import SETUP_VARIABLES

PROCESSOR_NAMES = {"stripe": "stripe", "crypto": "crypto", "afterdark": "afterdark"}
TOKEN = re.compile(r"^[A-Za-z0-9_\-]{3,255}$")
WALLET = re.compile(r"^0x[0-9a-fA-F]{40}$")
DIGITS = re.compile(r"^[0-9 \-]{12,23}$")
BRANDS = (("4", "visa"), ("5", "mastercard"), ("34", "amex"), ("37", "amex"), ("6", "discover"))


def processor_of(x_billing: str | None, body_provider: str | None) -> str:
    """``X-Billing`` (case-insensitive) wins; it must agree with the body's provider if both."""
    chosen = [v.strip().lower() for v in (x_billing, body_provider) if v and v.strip()]
    if not chosen:
        raise InvalidArgumentError(
            "say which payment provider to use (X-Billing: Stripe, Crypto or AfterDark)",
            field="X-Billing",
        )
    for value in chosen:
        if value not in PROCESSOR_NAMES:
            raise InvalidArgumentError(
                f"unknown payment provider {value[:40]!r}; use Stripe, Crypto or AfterDark",
                field="X-Billing",
            )
    if len(set(chosen)) > 1:
        raise InvalidArgumentError("X-Billing and the body's provider disagree", field="X-Billing")
    return PROCESSOR_NAMES[chosen[0]]


def payment_method(
    processor: str,
    header: str | None,
    *,
    test_card: Callable[[str], str | None] | None = None,
    networks: tuple[str, ...] = (),
) -> dict[str, str]:
    """The method to record and use. ``test_card`` maps a Stripe test number (test mode only)."""
    text = (header or "").strip()
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if processor == "crypto":
        return _crypto(kind, rest, networks)
    if kind != "card" or not rest:
        raise InvalidArgumentError(
            "X-Preferred-Payment must be card:TOKEN (a payment method token such as pm_…)",
            field="X-Preferred-Payment",
        )
    parts = rest.split(":")
    if DIGITS.match(parts[0]):
        return _test_card(parts, processor, test_card)
    if len(parts) != 1 or not TOKEN.match(parts[0]):
        raise InvalidArgumentError(
            "X-Preferred-Payment card token is malformed", field="X-Preferred-Payment"
        )
    return {"type": "card", "token": refuse_pan(parts[0], "X-Preferred-Payment")}


def _test_card(
    parts: list[str], processor: str, test_card: Callable[[str], str | None] | None
) -> dict[str, str]:
    number = re.sub(r"[ \-]", "", parts[0])
    token = test_card(number) if (processor == "stripe" and test_card is not None) else None
    if token is None:
        raise InvalidArgumentError(
            "raw card numbers are not accepted: pay with a payment method token (card:pm_…) "
            "created by Stripe.js or the Stripe API",
            field="X-Preferred-Payment",
        )
    brand = next((name for prefix, name in BRANDS if number.startswith(prefix)), "card")
    return {"type": "card", "token": token, "brand": brand, "last4": number[-4:]}


def _crypto(kind: str, rest: str, networks: tuple[str, ...]) -> dict[str, str]:
    parts = rest.split(":")
    if kind != "crypto" or len(parts) not in {2, 3}:
        raise InvalidArgumentError(
            "X-Preferred-Payment must be crypto:NETWORK:WALLET", field="X-Preferred-Payment"
        )
    network, wallet = parts[0].lower(), parts[-1]
    asset = parts[1].lower() if len(parts) == 3 else "usdc"
    if not networks:
        raise InvalidArgumentError(
            "crypto payments are not configured on this server: the operator sets "
            + SETUP_VARIABLES["crypto"],
            field="provider",
        )
    supported = ", ".join(networks)
    if network not in networks:
        raise InvalidArgumentError(
            f"network {network[:40]!r} is not supported; supported: {supported} (USDC; the "
            "server's CRYPTO_NETWORK)",
            field="X-Preferred-Payment",
        )
    if asset != "usdc":
        raise InvalidArgumentError(
            f"token {asset[:20]!r} is not supported; supported: USDC on {supported}",
            field="X-Preferred-Payment",
        )
    if not WALLET.match(wallet):
        raise InvalidArgumentError(
            "wallet must be a 0x-prefixed 20-byte hex address", field="X-Preferred-Payment"
        )
    return {"type": "crypto", "network": network, "wallet": wallet.lower()}
