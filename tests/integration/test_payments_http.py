"""Payments end to end: the REST API and jobs with the real ``stripe`` library against a local
Stripe fake (signed webhooks), a fake Ethereum JSON-RPC chain and a fake AfterDark."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from litestar.testing import TestClient

from domain.crypto_requests import TooManyOpenRequestsError
from domain.crypto_wallets import named_wallet_id
from domain.services import payments as payment_service
from domain.services.payments import PaymentRequest
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.cli.admin import main as admin_main
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.fake_servers.afterdark import running_afterdark
from tests.fake_servers.eth_rpc import FakeChain, running_chain
from tests.fake_servers.stripe import FakeStripe, running_stripe
from tests.support.http import JWT_SECRET
from tests.support.pg import env_of

USD = 1_000_000
PASSWORD = "correct-horse-battery"
CARD = "4242424242424242"
RECEIVER = "0x" + "11" * 20
TOKEN = "0x" + "22" * 20
WALLET = "0x" + "33" * 20


@dataclasses.dataclass
class Shop:
    client: TestClient[Any]
    c: Container
    stripe: FakeStripe
    chain: FakeChain
    auth: dict[str, str]
    admin: dict[str, str]
    user_id: str

    def pay(
        self,
        amount: Any = "50.00",
        *,
        method: str = "card:pm_card_visa",
        key: str | None = None,
        billing: str = "Stripe",
        **body: Any,
    ) -> Any:
        headers = {**self.auth, "X-Billing": billing, "X-Preferred-Payment": method}
        if key:
            headers["Idempotency-Key"] = key
        return self.client.post(
            "/api/v1/billing/payment",
            json={"amount": amount, "currency": "USD", **body},
            headers=headers,
        )

    def run(self, fn: Any, *args: Any) -> Any:
        """Await ``fn(*args)`` in the app's event loop (its HTTP clients live there)."""
        return self.client.blocking_portal.call(fn, *args)

    def balance(self) -> int:
        return self.c.ledger.account(self.user_id).balance

    def webhook(self, event: dict[str, Any], *, signature: str | None = None) -> Any:
        payload = self.stripe.event_payload(event)
        return self.client.post(
            "/api/v1/billing/webhooks/stripe",
            content=payload,
            headers={"Stripe-Signature": signature or self.stripe.sign(payload)},
        )


def _login(client: TestClient[Any], email: str) -> dict[str, str]:
    client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "name": "U"})
    token = client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    return {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}


@pytest.fixture
def shop(settings: Settings, clock: FixedClock) -> Iterator[Shop]:
    with running_stripe() as stripe, running_chain() as chain:
        tuned = dataclasses.replace(
            settings,
            auth=dataclasses.replace(
                settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
            ),
            payments=dataclasses.replace(
                settings.payments,
                stripe_secret_key=stripe.secret_key,
                stripe_webhook_secret=stripe.webhook_secret,
                stripe_api_base=stripe.url,
                crypto_enabled=True,
                crypto_rpc_url=chain.url,
                crypto_receiving_address=RECEIVER,
                crypto_token_address=TOKEN,
                crypto_confirmations=3,
            ),
        )
        c = bootstrap(tuned, clock=clock)
        try:
            with TestClient(create_app(c)) as client:
                auth = _login(client, "payer@example.com")
                admin = _login(client, "boss@example.com")
                c.users.set_admin("boss@example.com", True, actor="test")
                user = c.users.by_email("payer@example.com")
                yield Shop(client, c, stripe, chain, auth, admin, user.id)
        finally:
            c.close()


def test_stripe_success_is_credited_once_and_replays(shop: Shop) -> None:
    first = shop.pay("19.99", key="k-1")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "succeeded"
    assert body["payment_method"] == {"type": "card", "brand": "visa", "last4": "4242"}
    assert shop.balance() == 19_990_000
    intents = shop.stripe.requests_to("POST", "/v1/payment_intents")
    assert [r.params["amount"] for r in intents] == ["1999"]  # exact cents
    again = shop.pay("19.99", key="k-1")
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == body["id"]
    assert shop.balance() == 19_990_000
    assert len(shop.stripe.payment_intents) == 1
    conflict = shop.pay("20.00", key="k-1")
    assert conflict.status_code == 409
    got = shop.client.get(f"/api/v1/billing/payments/{body['id']}", headers=shop.auth)
    assert got.json()["status"] == "succeeded"
    other = shop.client.get(f"/api/v1/billing/payments/{body['id']}", headers=shop.admin)
    assert other.status_code == 200  # admins may look
    shop.c.runner.catch_up()
    listed = shop.client.get("/api/v1/billing/payments", headers=shop.auth).json()
    assert [p["status"] for p in listed["payments"]] == ["succeeded"]


@pytest.mark.parametrize(
    ("amount", "headers", "status"),
    [
        ("0.50", {}, 400),  # below PAYMENT_MIN
        ("10001", {}, 400),  # above PAYMENT_MAX
        ("10.001", {}, 400),  # not whole cents
        ("10", {"X-Billing": "PayPal"}, 400),
        ("10", {"X-Preferred-Payment": "card"}, 400),
        ("10", {"X-Preferred-Payment": "crypto:bitcoin:" + WALLET, "X-Billing": "Crypto"}, 400),
    ],
)
def test_bad_payments_are_4xx_and_change_nothing(
    shop: Shop, amount: str, headers: dict[str, str], status: int
) -> None:
    base = {**shop.auth, "X-Billing": "Stripe", "X-Preferred-Payment": "card:pm_card_visa"}
    response = shop.client.post(
        "/api/v1/billing/payment", json={"amount": amount}, headers={**base, **headers}
    )
    assert response.status_code == status, response.text
    assert shop.stripe.payment_intents == {}
    euro = shop.client.post(
        "/api/v1/billing/payment", json={"amount": "10", "currency": "EUR"}, headers=base
    )
    assert euro.status_code == 400


def test_decline_is_402_and_credits_nothing(shop: Shop) -> None:
    response = shop.pay(method="card:pm_card_chargeDeclined")
    assert response.status_code == 402
    assert response.json()["status"] == "failed"
    assert "declined" in response.json()["failure"]
    assert shop.balance() == 0


def test_raw_card_number_maps_in_test_mode_and_never_lands_anywhere(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = shop.pay(method=f"card:{CARD}:12/30:987", key="raw")
    assert response.status_code == 201, response.text
    assert response.json()["payment_method"]["last4"] == "4242"
    assert CARD not in response.text
    for request in shop.stripe.requests:
        assert CARD not in request.raw()
    assert CARD not in caplog.text
    assert "12/30:987" not in caplog.text
    shop.c.runner.catch_up()
    with shop.c.db.read() as tx:
        tables = [
            r[0]
            for r in tx.fetchall(
                "SELECT name FROM sqlite_master WHERE type='table'"
                if shop.c.db.dialect == "sqlite"
                else "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        for table in tables:
            dump = json.dumps(
                [list(map(str, row)) for row in tx.fetchall(f"SELECT * FROM {table}")]
            )
            assert CARD not in dump, table
            assert "12/30:987" not in dump, table


def test_raw_card_number_is_refused_with_a_live_key(settings: Settings, clock: FixedClock) -> None:
    with running_stripe(secret_key="sk_live_fake") as stripe:
        tuned = dataclasses.replace(
            settings,
            auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET),
            payments=dataclasses.replace(
                settings.payments, stripe_secret_key=stripe.secret_key, stripe_api_base=stripe.url
            ),
        )
        c = bootstrap(tuned, clock=clock)
        try:
            with TestClient(create_app(c)) as client:
                auth = _login(client, "live@example.com")
                response = client.post(
                    "/api/v1/billing/payment",
                    json={"amount": "10"},
                    headers={
                        **auth,
                        "X-Billing": "stripe",
                        "X-Preferred-Payment": f"card:{CARD}:12/30:987",
                    },
                )
        finally:
            c.close()
    assert response.status_code == 400
    assert "raw card numbers are not accepted" in response.text
    assert CARD not in response.text
    assert stripe.requests == []


def test_3ds_pending_then_webhooks_once_and_out_of_order(shop: Shop) -> None:
    response = shop.pay(method="card:pm_card_threeDSecure2Required", key="3ds")
    assert response.status_code == 201
    pending = response.json()
    assert pending["status"] == "pending"
    shop.stripe.authenticate(pending["external_id"])
    events = shop.stripe.events_for(pending["external_id"])
    succeeded = next(e for e in events if e["type"] == "payment_intent.succeeded")
    for _ in range(2):  # duplicate delivery
        assert shop.webhook(succeeded).status_code == 200
    assert shop.balance() == 50 * USD
    stale = shop.stripe.make_event("payment_intent.payment_failed", succeeded["data"]["object"])
    assert shop.webhook(stale).status_code == 200
    payment = shop.client.get(f"/api/v1/billing/payments/{pending['id']}", headers=shop.auth)
    assert payment.json()["status"] == "succeeded"
    assert shop.balance() == 50 * USD


def test_bad_webhook_signatures_change_nothing(shop: Shop) -> None:
    response = shop.pay(method="card:pm_card_threeDSecure2Required")
    shop.stripe.authenticate(response.json()["external_id"])
    event = next(
        e
        for e in shop.stripe.events_for(response.json()["external_id"])
        if e["type"] == "payment_intent.succeeded"
    )
    payload = shop.stripe.event_payload(event)
    for signature in (
        "",
        shop.stripe.sign(payload, secret="whsec_other"),
        shop.stripe.sign(payload, t=1_000),  # stale
        shop.stripe.sign(payload + b" "),
    ):
        assert shop.webhook(event, signature=signature or "t=1,v1=00").status_code == 400
    assert shop.c.ledger.account(shop.user_id).balance == 0


def test_refund_and_dispute_debit_once(shop: Shop) -> None:
    paid = shop.pay("40.00").json()
    refund = shop.client.post(
        f"/api/v1/admin/payments/{paid['id']}/refund", json={"amount": "10"}, headers=shop.admin
    )
    assert refund.status_code == 200, refund.text
    assert shop.balance() == 30 * USD
    refunded = next(
        e for e in shop.stripe.events_for(paid["external_id"]) if e["type"] == "charge.refunded"
    )
    shop.c.runner.catch_up()
    assert shop.webhook(refunded).status_code == 200  # the same refund, told again
    assert shop.balance() == 30 * USD
    denied = shop.client.post(
        f"/api/v1/admin/payments/{paid['id']}/refund", json={}, headers=shop.auth
    )
    assert denied.status_code == 403
    charge_id = shop.stripe.payment_intents[paid["external_id"]]["latest_charge"]
    shop.stripe.create_dispute(charge_id, 1_000)
    dispute = next(
        e
        for e in shop.stripe.events_for(paid["external_id"])
        if e["type"] == "charge.dispute.created"
    )
    assert shop.webhook(dispute).status_code == 200
    assert shop.webhook(dispute).status_code == 200
    assert shop.balance() == 20 * USD
    final = shop.client.get(f"/api/v1/billing/payments/{paid['id']}", headers=shop.auth).json()
    assert (final["refunded"], final["disputed"]) == ("10.000000", "10.000000")


def test_crash_between_stripe_and_our_record_is_credited_once(shop: Shop) -> None:
    """The payment was sent to Stripe (which charged it) but we never recorded the answer."""
    service = shop.c.payments
    request = PaymentRequest(
        owner=shop.user_id,
        amount=25 * USD,
        currency="USD",
        processor="stripe",
        method={"type": "card", "token": "pm_card_visa"},
        key="crashed",
    )
    payment = service._initiate(request)
    assert payment is not None
    gateway = shop.c.payments.processors["stripe"]
    result = shop.run(gateway.charge, service._charge_request(payment))
    assert result.status == "succeeded"  # Stripe has the money, our payment says initiated
    shop.c.runner.catch_up()
    jobs = shop.c.payment_jobs()
    jobs.reconcile_age = -1
    shop.run(jobs.reconcile_once)
    assert shop.balance() == 25 * USD
    succeeded = next(
        e
        for e in shop.stripe.events_for(result.external_id)
        if e["type"] == "payment_intent.succeeded"
    )
    assert shop.webhook(succeeded).status_code == 200
    shop.run(jobs.reconcile_once)
    assert shop.balance() == 25 * USD
    assert len(shop.stripe.payment_intents) == 1


def test_concurrent_retries_with_one_key_make_one_payment(shop: Shop) -> None:
    request = PaymentRequest(
        owner=shop.user_id,
        amount=30 * USD,
        currency="USD",
        processor="stripe",
        method={"type": "card", "token": "pm_card_visa"},
        key="same-key",
    )

    async def race() -> list[Any]:
        return await asyncio.gather(*(shop.c.payments.create(request) for _ in range(6)))

    results = shop.run(race)
    assert len({p.id for p, _ in results}) == 1
    assert sum(new for _, new in results) == 1
    assert len(shop.stripe.payment_intents) == 1
    assert shop.balance() == 30 * USD


def test_statement_reconciles(shop: Shop) -> None:
    shop.pay("50.00")
    shop.c.ledger.charge(shop.user_id, 1_234_567, key="c1", reference="gpu-x", reason="GPU time")
    paid = shop.pay("10.00").json()
    shop.client.post(f"/api/v1/admin/payments/{paid['id']}/refund", json={}, headers=shop.admin)
    month = shop.c.ledger.clock().strftime("%Y-%m")
    statement = shop.client.get(f"/api/v1/billing/statements/{month}", headers=shop.auth).json()
    assert statement["opening_balance"] == "0.000000"
    assert statement["payments"] == "60.000000"
    assert statement["charges"] == "1.234567"
    assert statement["charges_by_instance"] == {"gpu-x": "1.234567"}
    assert statement["refunds"] == "10.000000"
    assert statement["closing_balance"] == "48.765433"
    assert statement["reconciles"] is True
    bad = shop.client.get("/api/v1/billing/statements/2026-13", headers=shop.auth)
    assert bad.status_code == 400


def test_statement_shows_its_hash_chain(shop: Shop, clock: FixedClock) -> None:
    from domain.statement_chain import GENESIS
    from infrastructure.eventstore.statement_hashes import StatementHashes, verify

    shop.pay("20.00")
    november = clock.now.strftime("%Y-%m")
    clock.advance(days=31)
    shop.pay("5.00")
    url = "/api/v1/billing/statements/"
    closed = shop.client.get(url + november, headers=shop.auth).json()
    assert closed["opening_hash"] == GENESIS
    assert len(closed["closing_hash"]) == 64
    assert closed["closing_hash"] != GENESIS
    current = shop.client.get(url + clock.now.strftime("%Y-%m"), headers=shop.auth).json()
    assert current["opening_hash"] == closed["closing_hash"] != current["closing_hash"]
    recorded = verify(shop.c.app, StatementHashes(shop.c.db), shop.user_id, None)
    assert [(v.month, v.closing_hash, v.problem) for v in recorded] == [
        (november, closed["closing_hash"], None)
    ]


def test_auto_renew_starts_one_payment_per_crossing(shop: Shop) -> None:
    shop.pay("20.00")
    setting = shop.client.put(
        "/api/v1/billing/auto-renew",
        json={
            "enabled": True,
            "threshold": "10",
            "amount": "25",
            "payment_method": "card:pm_card_visa",
        },
        headers=shop.auth,
    )
    assert setting.status_code == 200, setting.text
    shop.c.ledger.charge(shop.user_id, 15 * USD, key="spend-1")  # 5 left: below 10
    shop.c.ledger.charge(shop.user_id, 1 * USD, key="spend-2")  # still below: same crossing
    shop.c.runner.catch_up()
    jobs = shop.c.payment_jobs()
    assert shop.run(jobs.auto_renew_once) == 1
    shop.c.runner.catch_up()
    assert shop.run(jobs.auto_renew_once) == 0
    assert shop.balance() == 29 * USD
    refused = shop.client.put(
        "/api/v1/billing/auto-renew",
        json={"enabled": True, "threshold": "1", "amount": "5", "payment_method": f"card:{CARD}"},
        headers=shop.auth,
    )
    assert refused.status_code == 400  # a card number in a text field (domain.pan)
    assert refused.json()["field"] == "payment_method"


def _crypto(shop: Shop, amount: str, key: str) -> dict[str, Any]:
    response = shop.pay(amount, method=f"crypto:ethereum:{WALLET}", billing="Crypto", key=key)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "pending"
    assert body["crypto"]["pay_to"] == RECEIVER
    # the request's own exact amount: the cents asked for plus a tag of 1-99,999 units
    requested = int(Decimal(amount) * USD)
    assert requested < body["crypto"]["amount_units"] < requested + USD // 10
    assert Decimal(body["amount"]) * USD == body["crypto"]["amount_units"]
    return body


def _units(body: dict[str, Any]) -> int:
    units: int = body["crypto"]["amount_units"]
    return units


def _scan(shop: Shop) -> None:
    shop.chain.mine(3)  # confirmations
    shop.c.runner.catch_up()
    shop.run(shop.c.payment_jobs().scan_once)
    shop.c.runner.catch_up()


def test_crypto_exact_under_over_duplicate(shop: Shop) -> None:
    _scan(shop)  # start the scanner at the current head
    exact = _crypto(shop, "10", "c1")
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, _units(exact))
    shop.chain.transfer("0x" + "44" * 20, WALLET, RECEIVER, _units(exact))  # another token
    _scan(shop)
    assert shop.c.payments.get(UUID(exact["id"])).state == "succeeded"
    assert shop.balance() == _units(exact)
    under = _crypto(shop, "20", "c2")
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, 5 * USD)  # not its amount: matched by wallet
    _scan(shop)
    assert shop.c.payments.get(UUID(under["id"])).state == "pending"
    assert shop.balance() == _units(exact)
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, 20 * USD)  # 25 of 20.0x: overpaid, all credited
    _scan(shop)
    settled = shop.c.payments.get(UUID(under["id"]))
    assert settled.state == "succeeded"
    assert settled.flags == ["underpaid", "overpaid"]
    assert shop.balance() == _units(exact) + 25 * USD
    with shop.c.db.transaction() as tx:  # rescan the same blocks: each transfer applies once
        tx.execute("UPDATE crypto_scan SET last_block = 0")
    _scan(shop)
    assert shop.balance() == _units(exact) + 25 * USD


def test_a_wallet_forgets_requests_that_can_no_longer_be_paid(
    shop: Shop, clock: FixedClock
) -> None:
    _scan(shop)
    request = _crypto(shop, "10", "old")
    clock.advance(hours=2)
    _scan(shop)
    assert shop.c.payments.get(UUID(request["id"])).state == "expired"  # still payable late
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, 3 * USD)  # not its amount: by wallet, late
    _scan(shop)
    assert shop.c.payments.get(UUID(request["id"])).flags == ["late"]
    assert shop.balance() == 3 * USD
    clock.advance(days=7)  # past the late window: nobody's wallet any more
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, 4 * USD)
    _scan(shop)
    assert shop.balance() == 3 * USD
    with shop.c.db.read() as tx:
        kinds = [r[0] for r in tx.fetchall("SELECT kind FROM crypto_transfers ORDER BY seen_at")]
    assert kinds == ["late", "unmatched"]


def test_crypto_expiry_and_late_payment(shop: Shop, clock: FixedClock) -> None:
    _scan(shop)
    request = _crypto(shop, "10", "late")
    clock.advance(hours=2)  # past CRYPTO_PAYMENT_TTL (1 h)
    _scan(shop)
    assert shop.c.payments.get(UUID(request["id"])).state == "expired"
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, _units(request))
    _scan(shop)
    late = shop.c.payments.get(UUID(request["id"]))
    assert late.state == "succeeded"
    assert late.flags == ["late"]
    assert shop.balance() == _units(request)


def test_crypto_from_a_wallet_two_users_named_is_credited_to_no_one(
    shop: Shop,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Anyone can name any wallet: a transfer it sends pays a request only when every recent
    request naming that wallet is one user's (else it waits for an admin)."""
    _scan(shop)
    own = _crypto(shop, "10", "mine")
    other = _login(shop.client, "mallory@example.com")
    claim = shop.client.post(
        "/api/v1/billing/payment",
        json={"amount": "10", "currency": "USD"},
        headers={
            **other,
            "X-Billing": "Crypto",
            "X-Preferred-Payment": f"crypto:ethereum:{WALLET}",
            "Idempotency-Key": "theirs",
        },
    )
    assert claim.status_code == 201, claim.text
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, 10 * USD)
    _scan(shop)
    assert shop.c.payments.get(UUID(own["id"])).state == "pending"
    assert shop.c.payments.get(UUID(claim.json()["id"])).state == "pending"
    assert shop.balance() == 0
    mallory = shop.c.users.by_email("mallory@example.com").id
    assert shop.c.ledger.account(mallory).balance == 0
    with shop.c.db.read() as tx:
        kinds = [r[0] for r in tx.fetchall("SELECT kind, payment_id FROM crypto_transfers")]
    assert kinds == ["ambiguous"]
    _scan(shop)  # a rescan keeps it unapplied
    assert shop.balance() == 0
    # the operator finds it
    for key, value in env_of(settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert admin_main(["crypto-transfers", "--unclaimed", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["kind"], row["sender"], row["amount"], row["payment_id"]) == (
        "ambiguous",
        WALLET.lower(),
        "10.000000",
        None,
    )
    assert admin_main(["crypto-transfers"]) == 0
    assert "ambiguous" in capsys.readouterr().out


def _crypto_as(shop: Shop, auth: dict[str, str], amount: str, key: str) -> Any:
    return shop.client.post(
        "/api/v1/billing/payment",
        json={"amount": amount, "currency": "USD"},
        headers={
            **auth,
            "X-Billing": "Crypto",
            "X-Preferred-Payment": f"crypto:ethereum:{WALLET}",
            "Idempotency-Key": key,
        },
    )


def test_crypto_from_a_shared_wallet_pays_each_request_by_its_exact_amount(shop: Shop) -> None:
    """Two users pay from one exchange hot wallet: each transfer of a request's own amount pays
    that request, whoever else names the wallet; a round amount still waits for an admin."""
    _scan(shop)
    mine = _crypto(shop, "10", "mine")
    other = _login(shop.client, "neighbour@example.com")
    theirs = _crypto_as(shop, other, "10", "theirs")
    assert theirs.status_code == 201, theirs.text
    assert _units(theirs.json()) != _units(mine)
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, _units(theirs.json()))
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, _units(mine))
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, 10 * USD)  # no request's amount
    _scan(shop)
    assert shop.c.payments.get(UUID(mine["id"])).state == "succeeded"
    assert shop.c.payments.get(UUID(theirs.json()["id"])).state == "succeeded"
    assert shop.balance() == _units(mine)
    neighbour = shop.c.users.by_email("neighbour@example.com").id
    assert shop.c.ledger.account(neighbour).balance == _units(theirs.json())
    with shop.c.db.read() as tx:
        kinds = sorted(r[0] for r in tx.fetchall("SELECT kind FROM crypto_transfers"))
    assert kinds == ["ambiguous", "exact", "exact"]
    _scan(shop)
    assert shop.balance() == _units(mine)


def test_crypto_exact_amounts_are_unique_until_a_request_can_no_longer_be_paid(
    shop: Shop, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(payment_service, "TAG_UNITS", 2)  # two amounts per size: 10.000001/2
    _scan(shop)
    first, second = _crypto(shop, "10", "a"), _crypto(shop, "10", "b")
    assert {_units(first), _units(second)} == {10 * USD + 1, 10 * USD + 2}
    refused = shop.pay("10", method=f"crypto:ethereum:{WALLET}", billing="Crypto", key="c")
    assert refused.status_code == 503, refused.text
    assert "exact amount" in refused.json()["detail"]
    assert len(shop.client.get("/api/v1/billing/payments", headers=shop.auth).json()) == 2
    assert _crypto(shop, "11", "d")["status"] == "pending"  # another size has its own amounts
    # a request past its deadline still takes a late payment for a week; then its amount is free
    clock.advance(hours=2)
    _scan(shop)
    refused = shop.pay("10", method=f"crypto:ethereum:{WALLET}", billing="Crypto", key="e")
    assert refused.status_code == 503
    clock.advance(days=7)
    again = _crypto(shop, "10", "f")
    assert _units(again) in {_units(first), _units(second)}
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, _units(again))
    _scan(shop)
    assert shop.c.payments.get(UUID(again["id"])).state == "succeeded"
    assert shop.balance() == _units(again)


def test_crypto_requests_at_once_get_distinct_exact_amounts(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests racing for few amounts: each saved request holds an amount no other holds (a
    reservation that lost the race is retried with another amount)."""
    monkeypatch.setattr(payment_service, "TAG_UNITS", 40)
    service = shop.c.payments
    assert service.crypto is not None
    service.crypto = dataclasses.replace(service.crypto, max_open=24)  # one user's 24 requests

    def start(n: int) -> Any:
        request = PaymentRequest(
            owner=shop.user_id,
            amount=10 * USD,
            currency="USD",
            processor="crypto",
            method={"type": "crypto", "network": "ethereum", "wallet": WALLET},
            key=f"race-{n}",
        )
        return service._initiate(request)

    with ThreadPoolExecutor(8) as pool:
        payments = list(pool.map(start, range(24)))
    amounts = [p.amount for p in payments]
    assert len(set(amounts)) == 24
    assert all(10 * USD < a <= 10 * USD + 40 for a in amounts)
    for p in payments:
        assert service.paid_by_exact_amount("ethereum", p.amount) == str(p.id)
    # all 24 named one wallet at once: each is on it (a save that lost the race was retried)
    wallet = service.app.repository.get(named_wallet_id("ethereum", WALLET))
    assert sorted(pid for pid, _ in wallet.payable(shop.c.payments.clock())) == sorted(
        str(p.id) for p in payments
    )
    # a part payment from that wallet goes to the oldest open request
    assert service.paid_by_wallet("ethereum", WALLET) == (
        str(min(payments, key=lambda p: (p.created_at, str(p.id))).id),
        "claimed",
    )


def test_afterdark_payment(settings: Settings, clock: FixedClock) -> None:
    with running_afterdark() as afterdark:
        tuned = dataclasses.replace(
            settings,
            auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET),
            payments=dataclasses.replace(
                settings.payments, afterdark_api_key="ad_test_key", afterdark_api_url=afterdark.url
            ),
        )
        c = bootstrap(tuned, clock=clock)
        try:
            with TestClient(create_app(c)) as client:
                auth = _login(client, "ad@example.com")
                headers = {**auth, "X-Billing": "AfterDark", "X-Preferred-Payment": "card:tok_ok"}
                ok = client.post(
                    "/api/v1/billing/payment", json={"amount": "12.34"}, headers=headers
                )
                declined = client.post(
                    "/api/v1/billing/payment",
                    json={"amount": "5"},
                    headers={**headers, "X-Preferred-Payment": "card:tok_decline"},
                )
                user = c.users.by_email("ad@example.com")
                balance = c.ledger.account(user.id).balance
        finally:
            c.close()
    assert ok.status_code == 201, ok.text
    assert ok.json()["status"] == "succeeded"
    assert declined.status_code == 402
    assert balance == 12_340_000
    assert afterdark.charge_count == 2


def test_refund_beyond_the_balance_records_a_shortfall(shop: Shop) -> None:
    paid = shop.pay("40.00").json()
    shop.c.ledger.charge(shop.user_id, 35 * USD, key="spent")  # 5 left, cap 0
    refund = shop.client.post(
        f"/api/v1/admin/payments/{paid['id']}/refund", json={}, headers=shop.admin
    )
    assert refund.status_code == 200, refund.text
    assert refund.json()["refunded"] == "40.000000"
    assert shop.balance() == 0  # only what the account had was taken back
    payment = shop.c.payments.get(UUID(paid["id"]))
    assert payment.state == "refunded"
    assert payment.shortfall == 35 * USD


def test_other_webhook_types_are_acknowledged_and_ignored(shop: Shop) -> None:
    event = shop.stripe.make_event("customer.created", {"id": "cus_1", "object": "customer"})
    response = shop.webhook(event)
    assert response.status_code == 200
    assert response.json() == {"received": True, "ignored": "customer.created"}


def test_transactions_list_payments_in_every_state(shop: Shop) -> None:
    shop.pay("10.00")
    shop.pay("11.00", method="card:pm_card_chargeDeclined")
    shop.pay("12.00", method="card:pm_card_threeDSecure2Required")
    shop.c.runner.catch_up()
    listed = shop.client.get("/api/v1/billing/transactions", headers=shop.auth).json()
    states = {p["amount"]: p["status"] for p in listed["payments"]}
    assert states == {"10.000000": "succeeded", "11.000000": "failed", "12.000000": "pending"}
    assert [t["type"] for t in listed["transactions"]] == ["grant"]


def test_crypto_open_requests_are_capped_per_user(shop: Shop, clock: FixedClock) -> None:
    """Five open crypto requests per user (the default); the sixth is a 429 and reserves
    nothing; paying one or letting one expire frees a place; other users are not affected."""
    _scan(shop)
    first, *_ = [_crypto(shop, "10", f"open-{n}") for n in range(5)]
    refused = shop.pay("10", method=f"crypto:ethereum:{WALLET}", billing="Crypto", key="sixth")
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["limit"] == 5
    assert problem["open"] == 5
    assert "5 crypto payment requests are open" in problem["detail"]
    assert 0 < problem["retry_after"] <= 3600
    shop.c.runner.catch_up()
    assert shop.client.get("/api/v1/billing/payments", headers=shop.auth).json()["count"] == 5
    # a retry of a request already made is its replay, not a new request
    again = shop.pay("10", method=f"crypto:ethereum:{WALLET}", billing="Crypto", key="open-0")
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    assert _crypto_as(shop, _login(shop.client, "other@example.com"), "10", "o").status_code == 201
    # paying one request frees its place
    shop.chain.transfer(TOKEN, WALLET, RECEIVER, _units(first))
    _scan(shop)
    assert shop.c.payments.get(UUID(first["id"])).state == "succeeded"
    _crypto(shop, "10", "sixth")
    refused = shop.pay("10", method=f"crypto:ethereum:{WALLET}", billing="Crypto", key="seventh")
    assert refused.status_code == 429
    # past their deadline (one hour) requests are no longer open
    clock.advance(hours=1, seconds=1)
    _crypto(shop, "10", "seventh")


def test_crypto_request_cap_holds_when_requests_race(shop: Shop) -> None:
    """Twelve requests of one user at once: exactly five are saved (the per-user aggregate's
    version makes the later saves retry on fresh state, and those find the cap reached)."""
    service = shop.c.payments

    def start(n: int) -> str:
        request = PaymentRequest(
            owner=shop.user_id,
            amount=10 * USD,
            currency="USD",
            processor="crypto",
            method={"type": "crypto", "network": "ethereum", "wallet": WALLET},
            key=f"race-{n}",
        )
        try:
            service._initiate(request)
        except TooManyOpenRequestsError:
            return "refused"
        return "saved"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(start, range(12)))
    assert sorted(outcomes) == ["refused"] * 7 + ["saved"] * 5
    shop.c.runner.catch_up()
    listed = shop.client.get("/api/v1/billing/payments", headers=shop.auth).json()
    assert listed["count"] == 5


def test_crypto_exact_amounts_exhausted_is_a_clear_503_for_everyone(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All tags of an amount taken (by other users, each under the cap): the next request for
    that amount, whoever asks, is a 503 that says why and to retry; other amounts still work."""
    monkeypatch.setattr(payment_service, "TAG_UNITS", 3)
    _scan(shop)
    _crypto(shop, "10", "a")
    for n in range(2):
        taker = _login(shop.client, f"taker{n}@example.com")
        assert _crypto_as(shop, taker, "10", f"t{n}").status_code == 201
    refused = _crypto_as(shop, _login(shop.client, "late@example.com"), "10", "late")
    assert refused.status_code == 503, refused.text
    problem = refused.json()
    assert problem["title"] == "Service Unavailable"  # RFC 9457: the status phrase
    assert problem["detail"].startswith("No exact amount free")
    assert "every one tried was taken" in problem["detail"]
    assert "retry" in problem["detail"]
    assert problem["field"] == "amount"
    assert _crypto(shop, "10.01", "b")["status"] == "pending"
