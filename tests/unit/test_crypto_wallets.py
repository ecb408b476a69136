"""NamedWallet: who names a sending wallet, while their requests can still be paid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.crypto_wallets import NamedWallet, named_wallet_id

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
WEEK = timedelta(days=7)


def test_the_id_names_network_and_wallet_in_any_case() -> None:
    wallet = NamedWallet("ethereum", "0xABC")
    assert wallet.id == named_wallet_id("ethereum", "0xabc")
    assert wallet.wallet == "0xabc"
    assert named_wallet_id("base", "0xabc") != wallet.id


def test_one_users_requests_make_a_payer_two_users_make_none() -> None:
    wallet = NamedWallet("ethereum", "0xabc")
    assert wallet.payable(NOW) == []
    assert wallet.payer(NOW) is None
    wallet.name("p2", "ann", until=NOW + WEEK, now=NOW + timedelta(minutes=1))
    wallet.name("p1", "ann", until=NOW + WEEK, now=NOW)
    assert wallet.payable(NOW + timedelta(minutes=2)) == [("p1", "ann"), ("p2", "ann")]
    assert wallet.payer(NOW + timedelta(minutes=2)) == "ann"
    wallet.name("p3", "bob", until=NOW + 2 * WEEK, now=NOW + timedelta(minutes=3))
    assert wallet.payer(NOW + timedelta(minutes=3)) is None
    # once ann's requests can no longer be paid, bob's alone remain
    assert wallet.payable(NOW + WEEK) == [("p3", "bob")]
    assert wallet.payer(NOW + WEEK) == "bob"


def test_requests_that_can_no_longer_be_paid_are_forgotten() -> None:
    wallet = NamedWallet("ethereum", "0xabc")
    for n in range(50):
        wallet.name(f"old{n}", f"user{n}", until=NOW + WEEK, now=NOW)
    wallet.name("new", "cat", until=NOW + 3 * WEEK, now=NOW + 2 * WEEK)
    assert list(wallet.requests) == ["new"]
    assert wallet.payer(NOW + 2 * WEEK) == "cat"
