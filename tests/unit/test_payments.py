"""Payment aggregate, statements and payment-header parsing: the rules, without servers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain.errors import InvalidArgumentError
from domain.payments import Payment, PaymentStateError, payment_id_for
from domain.statements import month_bounds, statement
from interfaces.payment_input import payment_method, processor_of

NOW = datetime(2026, 11, 10, 12, tzinfo=UTC)
USD = 1_000_000


def new_payment(processor: str = "stripe", amount: int = 50 * USD, **kw: Any) -> Payment:
    return Payment(
        owner="u1",
        key="k1",
        amount=amount,
        currency="USD",
        processor=processor,
        method={"type": "card", "token": "pm_card_visa"},
        fingerprint="f",
        at=NOW,
        **kw,
    )


def test_id_comes_from_owner_and_key() -> None:
    assert new_payment().id == payment_id_for("u1", "k1")
    assert payment_id_for("u1", "k1") != payment_id_for("u2", "k1")


def test_success_once_then_reversals_down_to_refunded() -> None:
    p = new_payment()
    assert p.mark_pending("pi_1", now=NOW)
    assert p.succeed(external_id="pi_1", credited=50 * USD, now=NOW)
    assert not p.succeed(external_id="pi_1", credited=50 * USD, now=NOW)  # once
    assert p.credited == 50 * USD
    p.reverse("refund", 20 * USD, debited=20 * USD, reference="re_1", now=NOW)
    assert p.state == "succeeded"
    assert p.reversible == 30 * USD
    p.reverse("refund", 30 * USD, debited=10 * USD, reference="re_2", now=NOW)
    assert p.state == "refunded"
    assert p.shortfall == 20 * USD
    with pytest.raises(InvalidArgumentError):
        p.reverse("refund", 1, debited=1, reference="re_3", now=NOW)


def test_failure_after_success_is_stale_and_ignored() -> None:
    p = new_payment()
    p.succeed(external_id="pi_1", credited=50 * USD, now=NOW)
    assert not p.fail("card declined", now=NOW)
    assert p.state == "succeeded"


def test_success_after_failure_is_allowed_but_not_after_refund() -> None:
    p = new_payment()
    assert p.fail("declined", now=NOW)
    assert p.succeed(external_id="pi_1", credited=50 * USD, now=NOW)
    p.reverse("dispute", 50 * USD, debited=50 * USD, reference="dp_1", now=NOW)
    assert p.state == "disputed"
    with pytest.raises(PaymentStateError):
        p.succeed(external_id="pi_1", credited=50 * USD, now=NOW)


def test_reversal_needs_a_settled_payment() -> None:
    with pytest.raises(PaymentStateError):
        new_payment().reverse("refund", 1, debited=1, reference="x", now=NOW)


@pytest.mark.parametrize(
    ("transfers", "kinds", "credits"),
    [
        ([50], ["exact"], [50]),
        ([20, 30], ["underpaid", "exact"], [0, 50]),
        ([20, 40], ["underpaid", "overpaid"], [0, 60]),
        ([70], ["overpaid"], [70]),
    ],
)
def test_crypto_transfers_add_up(
    transfers: list[int], kinds: list[str], credits: list[int]
) -> None:
    p = new_payment("crypto", expires_at=NOW + timedelta(hours=1))
    p.mark_pending("", now=NOW)
    got = [
        p.record_transfer(f"0xt:{i}", amount * USD, block=1, now=NOW)
        for i, amount in enumerate(transfers)
    ]
    assert [k for k, _ in got] == kinds
    assert [c for _, c in got] == [c * USD for c in credits]


def test_crypto_duplicate_late_and_extra() -> None:
    p = new_payment("crypto", expires_at=NOW + timedelta(hours=1))
    p.mark_pending("", now=NOW)
    assert p.expire(NOW + timedelta(hours=2))
    assert p.record_transfer("0xa:0", 50 * USD, block=1, now=NOW) == ("late", 50 * USD)
    assert p.record_transfer("0xa:0", 50 * USD, block=1, now=NOW) == ("duplicate", 0)
    p.succeed(external_id="0xa:0", credited=50 * USD, now=NOW)
    assert p.record_transfer("0xb:0", 5 * USD, block=2, now=NOW) == ("extra", 5 * USD)
    assert p.credited == 55 * USD
    assert p.flags == ["late", "extra"]


def test_expire_is_for_crypto_only() -> None:
    assert not new_payment().expire(NOW)


@dataclass
class Ev:
    name: str
    at: datetime
    data: dict[str, Any]


def test_statement_reconciles_to_the_micro_usd() -> None:
    oct_ = datetime(2026, 10, 20, tzinfo=UTC)
    nov = datetime(2026, 11, 5, tzinfo=UTC)
    dec = datetime(2026, 12, 1, tzinfo=UTC)
    events = [
        Ev("Granted", oct_, {"amount": 10 * USD, "source": "payment"}),
        Ev("Charged", oct_, {"amount": 1_234_567, "reference": "gpu-a"}),
        Ev("Granted", nov, {"amount": 50 * USD, "source": "payment"}),
        Ev("Granted", nov, {"amount": 5 * USD, "source": "admin"}),
        Ev("HoldPlaced", nov, {"amount": 3 * USD, "hold_id": "h1", "reference": "gpu-b"}),
        Ev("HoldCaptured", nov, {"amount": 2_500_001, "hold_id": "h1"}),
        Ev("Charged", nov, {"amount": 999, "reference": ""}),
        Ev("HoldReleased", nov, {"amount": 499_999, "hold_id": "h1"}),
        Ev("Debited", nov, {"amount": 7 * USD, "kind": "refund"}),
        Ev("Debited", nov, {"amount": 1, "kind": "adjustment"}),
        Ev("Granted", dec, {"amount": 99 * USD, "source": "payment"}),
    ]
    s = statement("2026-11", events)
    assert s.opening == 10 * USD - 1_234_567
    assert (s.payments, s.grants) == (50 * USD, 5 * USD)
    assert s.charges == 2_500_001 + 999
    assert s.charges_by_reference == {"gpu-b": 2_500_001, "other": 999}
    assert (s.refunds, s.adjustments) == (7 * USD, 1)
    assert s.closing == s.opening + 55 * USD - 2_501_000 - 7 * USD - 1
    assert s.reconciles
    empty = statement("2027-01", events)
    assert empty.opening == empty.closing == s.closing + 99 * USD


def test_month_bounds() -> None:
    assert month_bounds("2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    for bad in ("2026-13", "26-01", "2026-1", "2026-00"):
        with pytest.raises(InvalidArgumentError):
            month_bounds(bad)


def test_month_bounds_past_datetime_range_is_invalid_input() -> None:
    assert month_bounds("0001-01")[0] == datetime(1, 1, 1, tzinfo=UTC)
    assert month_bounds("9999-11")[1] == datetime(9999, 12, 1, tzinfo=UTC)
    for bad in ("0000-01", "9999-12"):  # year 0; an end in year 10000
        with pytest.raises(InvalidArgumentError) as caught:
            month_bounds(bad)
        assert caught.value.details["field"] == "month"


def test_processor_choice() -> None:
    assert processor_of("Stripe", None) == "stripe"
    assert processor_of("AFTERDARK", "afterdark") == "afterdark"
    assert processor_of(None, "crypto") == "crypto"
    for header, body in ((None, None), ("paypal", None), ("stripe", "crypto")):
        with pytest.raises(InvalidArgumentError):
            processor_of(header, body)


def test_card_tokens_and_raw_numbers() -> None:
    assert payment_method("stripe", "card:pm_card_visa") == {
        "type": "card",
        "token": "pm_card_visa",
    }
    raw = "card:4242424242424242:12/30:123"
    with pytest.raises(InvalidArgumentError) as refused:
        payment_method("stripe", raw)
    assert "4242" not in str(refused.value)
    assert "123" not in str(refused.value.details)
    mapped = payment_method(
        "stripe", raw, test_card=lambda n: "pm_card_visa" if n == "4242424242424242" else None
    )
    assert mapped == {"type": "card", "token": "pm_card_visa", "brand": "visa", "last4": "4242"}
    with pytest.raises(InvalidArgumentError):  # not a test number: refused even in test mode
        payment_method("stripe", "card:4000123412341234:12/30:123", test_card=lambda _n: None)
    with pytest.raises(InvalidArgumentError):  # only Stripe maps test numbers
        payment_method("afterdark", raw, test_card=lambda _n: "pm_card_visa")


def test_crypto_method_names_what_is_supported() -> None:
    wallet = "0x" + "ab" * 20
    assert payment_method("crypto", f"crypto:Ethereum:{wallet}", networks=("ethereum",)) == {
        "type": "crypto",
        "network": "ethereum",
        "wallet": wallet,
    }
    assert payment_method("crypto", f"crypto:ethereum:usdc:{wallet}", networks=("ethereum",))
    for header, needle in (
        (f"crypto:bitcoin:{wallet}", "supported: ethereum"),
        (f"crypto:ethereum:dai:{wallet}", "USDC"),
        ("crypto:ethereum:0x123", "20-byte"),
    ):
        with pytest.raises(InvalidArgumentError, match=needle):
            payment_method("crypto", header, networks=("ethereum",))
