"""Every door's spending report says what enforcement decides (issue 17, item 3).

With 9.00 held of a 10.00 60-minute limit, REST, the agent action, the WebSocket state, the
admin CLI and gRPC all report 1.00 remaining (not 10.00), and a 2.00 charge is refused while
1.00 is allowed. The report is read from the aggregate at the service clock's time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from grpclib.client import Channel

from domain.errors import SpendingLimitExceededError
from domain.guardrails import GuardrailPolicy
from infrastructure.settings import Settings
from interfaces.agents.billing_actions import _spending
from interfaces.bootstrap import Container, bootstrap
from interfaces.cli.admin import main as admin_main
from interfaces.grpc.generated import gpuproxy as pb
from interfaces.ws.state import spending_json as ws_spending_json
from tests.conftest import FixedClock
from tests.integration.test_grpc import in_process
from tests.support.http import JWT_SECRET, test_client
from tests.support.http_auth import user_with_token
from tests.support.pg import env_of

USD = 1_000_000
LIMITED = GuardrailPolicy(enabled=True, limits={"60MIN": 10 * USD})
SPENDING = "/api/v1/guardrails/spending"
CHECK = "/api/v1/guardrails/spending/check"


def limited(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        ledger=dataclasses.replace(settings.ledger, guardrails=LIMITED),
        auth=dataclasses.replace(
            settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
    )


def hold_nine(c: Container, user_id: str) -> None:
    c.ledger.grant(user_id, 100 * USD, key="funds")
    expires_at = c.ledger.clock() + timedelta(hours=1)
    c.ledger.place_hold(user_id, "lease", 9 * USD, expires_at=expires_at, key="lease")


@pytest.fixture
def client(settings: Settings, clock: FixedClock) -> Iterator[Any]:
    with test_client(limited(settings), clock=clock) as c:
        yield c


def test_rest_agents_and_ws_report_holds_as_enforcement_counts_them(client: Any) -> None:
    user, auth = user_with_token(client, "held@example.com")
    c: Container = client.app.state.container
    user_id = user["id"]
    hold_nine(c, user_id)

    body = client.get(SPENDING, headers=auth).json()
    assert body["held"] == "9.000000"
    assert body["window_spent"]["60MIN"] == "0.000000"
    assert body["remaining"] == {"60MIN": "1.000000"}
    assert body["exceeded"] == []
    assert datetime.fromisoformat(body["timestamp"]) == c.ledger.clock()  # the service clock
    assert client.post(CHECK, headers=auth, json={"estimated_cost": "2.00"}).status_code == 402
    assert client.post(CHECK, headers=auth, json={"estimated_cost": "1.00"}).status_code == 200

    assert _spending(c, user_id) == body
    assert ws_spending_json(c.ledger.account(user_id)) == {
        k: v for k, v in body.items() if k != "user_id"
    }

    c.ledger.charge(user_id, USD, key="one")  # exactly the room left
    body = client.get(SPENDING, headers=auth).json()
    assert body["window_spent"]["60MIN"] == "1.000000"
    assert body["remaining"] == {"60MIN": "0.000000"}
    assert body["exceeded"] == ["60MIN"]
    with pytest.raises(SpendingLimitExceededError):
        c.ledger.charge(user_id, 1, key="more")


def test_the_report_counts_spend_recorded_by_a_clock_ahead_of_the_readers(
    client: Any, clock: FixedClock
) -> None:
    c: Container = client.app.state.container
    user = c.users.create("ahead@example.com", "pw-long-enough", "Ahead")
    c.ledger.grant(user.id, 100 * USD, key="funds")
    clock.advance(minutes=2)
    c.ledger.charge(user.id, 4 * USD, key="ahead")  # a writer 2 min ahead of the reader
    clock.advance(minutes=-2)
    report = c.ledger.spending(user.id)
    assert report.spent["60MIN"] == 4 * USD
    assert report.remaining == {"60MIN": 6 * USD}


def test_admin_cli_reports_holds_at_the_service_clock(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key, value in {**env_of(settings), "GUARDRAILS_MAX_60MIN_RATE": "10"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("GUARDRAILS_ENABLED", "true")
    c = bootstrap(limited(settings), clock=FixedClock(datetime.now(UTC)))
    try:
        user = c.users.create("cli@example.com", "pw-long-enough", "Cli")
        hold_nine(c, user.id)
    finally:
        c.close()
    capsys.readouterr()
    assert admin_main(["guardrails-spending", "cli@example.com", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["held"] == "9.000000"
    assert out["remaining"] == {"60MIN": "1.000000"}
    assert out["exceeded"] == []


def test_grpc_reports_holds_as_enforcement_counts_them(sqlite_settings: Settings) -> None:
    settings = limited(sqlite_settings)
    with in_process(settings) as (c, port):
        user = c.users.create("grpc@example.com", "pw-long-enough", "Grpc")
        key = c.auth.keys.create(user.id, "grpc-test")[1]
        hold_nine(c, user.id)

        async def ask() -> pb.GetSpendingInfoResponse:
            async with Channel("127.0.0.1", port) as channel:
                stub = pb.GpuProxyServiceStub(channel, metadata={"x-api-key": key})
                return await stub.get_spending_info(pb.GetSpendingInfoRequest())

        info = asyncio.run(ask())
    window = next(w for w in info.windows if w.window == "60MIN")
    assert (window.held, window.remaining, window.exceeded) == (9.0, 1.0, False)
    assert all(w.held == 9.0 for w in info.windows)
