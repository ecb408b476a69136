"""What-if replay against real stores (SQLite and PostgreSQL): the recorded rules give the
recorded bill, other rules are answered on REST and the admin CLI, nothing is written."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from litestar.testing import TestClient

from domain.guardrails import GuardrailPolicy
from domain.services.what_if import account_what_if
from domain.statements import statement
from domain.what_if import Rules
from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.cli.admin import main as admin_main
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.integration.test_proxy_http import USD, _rent, _running, _user
from tests.support.http import JWT_SECRET
from tests.support.pg import env_of

MARKUP_PPM = 100_000  # PRICE_MARKUP=0.10
POLICY = GuardrailPolicy(enabled=True, limits={"72H": 500 * USD})


@dataclasses.dataclass
class World:
    client: TestClient[Any]
    c: Container
    clock: FixedClock
    settings: Settings
    user_id: str
    auth: dict[str, str]


@pytest.fixture
def world(settings: Settings, clock: FixedClock) -> Iterator[World]:
    tuned = dataclasses.replace(
        settings,
        auth=dataclasses.replace(
            settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
        providers=dataclasses.replace(
            settings.providers, sandbox_enabled=True, sandbox_provisioning_delay=0.0
        ),
        marketplace=dataclasses.replace(settings.marketplace, price_markup_ppm=MARKUP_PPM),
        ledger=dataclasses.replace(settings.ledger, guardrails=POLICY),
    )
    c = bootstrap(tuned, clock=clock)
    try:
        with TestClient(create_app(c)) as client:
            auth = _user(client, c, "ann@example.com", 100 * USD)
            user_id = c.users.by_email("ann@example.com").id
            _record_a_month(client, c, clock, user_id, auth)
            yield World(client, c, clock, tuned, user_id, auth)
    finally:
        c.close()


def _record_a_month(
    client: TestClient[Any], c: Container, clock: FixedClock, uid: str, auth: dict[str, str]
) -> None:
    """GPU time (hold, metered captures), request fees, a refund, limits, an auto-renew."""
    ledger = c.ledger
    ledger.configure_auto_renew(
        uid, enabled=True, threshold=90 * USD, amount=20 * USD, payment_method="pm", actor="t"
    )
    [gpu] = _running(c, _rent(client, auth, 1))
    for _ in range(3):
        clock.advance(minutes=40)
        c.marketplace.meter(UUID(gpu["id"]))
    for n in range(5):
        clock.advance(minutes=7)
        ledger.charge(uid, 2 * USD, key=f"fee-{n}", reason="proxy requests")
    ledger.set_limits(uid, {"60MIN": 5 * USD}, actor="ann")
    clock.advance(hours=2)
    ledger.charge(uid, 4 * USD, key="fee-late", reason="proxy requests")
    ledger.grant(uid, 20 * USD, key="renewed", source="auto_renew")
    ledger.debit(uid, USD, key="refund", kind="refund")
    clock.advance(hours=1)
    c.marketplace.meter(UUID(gpu["id"]))


def _period(w: World) -> tuple[Any, Any]:
    start = w.clock.now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=30)


def _stored_events(w: World) -> int:
    return w.c.events.head()


def test_the_recorded_rules_give_exactly_the_recorded_bill(world: World) -> None:
    w = world
    start, end = _period(w)
    history = w.c.ledger.history(w.user_id)
    recorded = statement(start.strftime("%Y-%m"), history)
    assert recorded.charges > 14 * USD  # GPU time and fees were recorded
    before = _stored_events(w)
    rules = Rules(policy=w.c.ledger.policy, recorded_markup_ppm=MARKUP_PPM, markup_ppm=MARKUP_PPM)
    result = account_what_if(w.c.ledger, w.user_id, start, end, rules)
    assert result.real.bill == recorded.charges
    assert result.replay.bill == recorded.charges
    assert result.replay.refused == []
    assert result.replay.closing == result.real.closing == recorded.closing
    assert result.replay.lowest_balance == result.real.lowest_balance
    assert result.replay.auto_renew_at == result.real.auto_renew_at
    assert len(result.real.auto_renew_at) == 1
    assert _stored_events(w) == before  # wrote nothing


def test_rest_answers_tighter_limits_and_markup_for_the_callers_own_account(world: World) -> None:
    w = world
    start, end = _period(w)
    body = {"from": start.date().isoformat(), "to": end.date().isoformat()}
    same = w.client.post("/api/v1/billing/what-if", json=body, headers=w.auth)
    assert same.status_code == 200, same.text
    answer = same.json()
    assert answer["what_if"]["bill"] == answer["real"]["bill"]
    assert answer["difference"] == "0.000000"

    tight = {**body, "limits": {"60min": "1.50"}, "markup": "0"}
    answer = w.client.post("/api/v1/billing/what-if", json=tight, headers=w.auth).json()
    refused = answer["what_if"]["refused"]
    assert refused
    assert {r["reason"] for r in refused} == {"limit"}
    assert all(r["windows"] == ["60MIN"] for r in refused)
    assert answer["what_if"]["bill"] < answer["real"]["bill"]
    assert answer["what_if"]["bill"].count(".") == 1
    assert len(answer["what_if"]["bill"].split(".")[1]) == 6


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"from": "yesterday", "to": "2026-12-01"}, "from"),
        ({"from": "2026-11-01", "to": "2026-10-01"}, "to"),
        ({"from": "2026-01-01", "to": "2026-12-01"}, "to"),  # more than 93 days
        ({"from": "2026-11-01", "to": "2026-12-01", "limits": {"7min": "1"}}, "limits"),
        ({"from": "2026-11-01", "to": "2026-12-01", "limits": {"60min": "x"}}, "limits.60min"),
        ({"from": "2026-11-01", "to": "2026-12-01", "markup": "-5"}, "markup"),
        ({"from": "2026-11-01", "to": "2026-12-01", "proxy_price": "1"}, "proxy_price"),
    ],
)
def test_bad_input_is_400_naming_the_field(world: World, body: dict[str, Any], field: str) -> None:
    answer = world.client.post("/api/v1/billing/what-if", json=body, headers=world.auth)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field


def test_admin_cli_one_account_and_every_account(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    w = world
    for key, value in env_of(w.settings).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PRICE_MARKUP", "0.10")
    monkeypatch.setenv("GUARDRAILS_ENABLED", "true")
    monkeypatch.setenv("GUARDRAILS_MAX_72H_RATE", "500")
    monkeypatch.chdir(tmp_path)
    start, end = (d.date().isoformat() for d in _period(w))
    period = ["--from", start, "--to", end]
    capsys.readouterr()
    assert admin_main(["what-if", "ann@example.com", *period, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["what_if"]["bill"] == same["real"]["bill"]

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"RTX 4090": "0.01", "A100": "0.01", "H100": "0.01"}))
    cheaper = [*period, "--markup", "0", "--proxy-price", "0", "--prices", str(prices)]
    assert admin_main(["what-if", "ann@example.com", *cheaper, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["what_if"]["bill"] < answer["real"]["bill"]

    assert admin_main(["what-if", "--all-users", *period, "--limits", "60min=1.00", "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    assert totals["users"] == 1
    assert totals["real_bill"] == same["real"]["bill"]
    assert totals["refused"] > 0
    assert admin_main(["what-if", "ann@example.com", *period, "--limits", "60min=1.00"]) == 0
    assert "\tlimit\t60MIN" in capsys.readouterr().out  # a refusal row (plain when piped)
    with pytest.raises(SystemExit) as bad:
        admin_main(["what-if", "ann@example.com", *period, "--markup", "x"])
    assert bad.value.code == 2
    assert "markup" in capsys.readouterr().err
