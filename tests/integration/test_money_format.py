"""Money in one format (issue 19): every amount the service answers, at every door, is a USD
string with exactly six decimals ("49.958854", "0.000000"), never "0.00" beside "49.958854".

One account in one state (50 granted, 0.041146 charged, 1.25 held, a 60-minute limit of 10) is
read through a real server: REST (credits, transactions, usage, spending and its headers, the
402 problem body), the WebSocket event's attached state, MCP tools, gRPC (the refusal's reason,
a string field) and the client CLI's ``--json`` over REST and over gRPC.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from grpclib.client import Channel

from infrastructure.settings import load_settings
from interfaces.bootstrap import bootstrap
from interfaces.cli.client import main as client_main
from interfaces.grpc.generated import gpuproxy as pb
from tests.integration.test_mcp import Server, _call, _client
from tests.integration.test_ws import open_ws
from tests.support.http import JWT_SECRET, env_of, server_process
from tests.support.pg import free_port

USD = 1_000_000
SIX = re.compile(r"^-?\d+\.\d{6}$")
DECIMAL = re.compile(r"^-?\d+\.\d+$")
MONEY_KEYS = {"amount", "held", "spent", "limit", "requested", "available", "balance", "price"}


def money_strings(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    """Every string that looks like money: a decimal number, or any string under a money key."""
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}"
            if isinstance(item, str) and (
                DECIMAL.match(item) or any(k in str(key).lower() for k in MONEY_KEYS)
            ):
                yield sub, item
            else:
                yield from money_strings(item, sub)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from money_strings(item, f"{path}[{i}]")
    elif isinstance(value, str) and DECIMAL.match(value):
        yield path, value


def six_decimals(door: str, body: Any) -> set[str]:
    """Asserts every money string of ``body`` has exactly six decimals; returns the values."""
    found = list(money_strings(body))
    assert found, f"{door}: no amounts at all in {body!r}"
    bad = [(p, v) for p, v in found if not SIX.match(v)]
    assert not bad, f"{door}: {bad}"
    return {v for _, v in found}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int, Any]]:
    data: Path = tmp_path_factory.mktemp("money") / "data"
    settings = load_settings({"DATA_DIR": str(data), "JWT_SECRET": JWT_SECRET}, env_file=None)
    c = bootstrap(settings)
    grpc_port = free_port()
    env = {
        **env_of(settings),
        "GRPC_ENABLED": "true",
        "GRPC_PORT": str(grpc_port),
        "GUARDRAILS_ENABLED": "true",
        "RATE_LIMIT_PER_MINUTE": "100000",
        "SANDBOX_PROVISIONING_DELAY": "0",
    }
    try:
        user = c.users.create("money@example.com", "correct-horse-battery", "Money")
        c.ledger.grant(user.id, 50 * USD, key="grant", reason="welcome", actor="t")
        c.ledger.set_limits(user.id, {"60MIN": 10 * USD}, actor="t")
        expires = c.ledger.clock() + timedelta(hours=1)
        c.ledger.place_hold(user.id, "h1", 1_250_000, expires_at=expires, key="hold")
        key = c.auth.keys.create(user.id, "money")[1]
        with server_process(env, data / "server.log") as url:
            yield Server(url, key, key), grpc_port, (c, user.id)
    finally:
        c.close()


def test_every_door_answers_money_with_exactly_six_decimals(
    world: tuple[Server, int, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    server, grpc_port, (c, user_id) = world
    auth = {"X-API-Key": server.alice}
    seen: set[str] = set()

    with open_ws(server.url, key=server.alice) as ws:  # the WebSocket event of the charge
        ws.subscribe(topics=["account", "spending"])
        c.ledger.charge(user_id, 41_146, key="charge", reason="proxy", actor="t")
        event = ws.expect("event", 10)
    assert event["account"]["credits_remaining"] == "49.958854"
    seen |= six_decimals("ws account", event["account"])
    seen |= six_decimals("ws spending", event["spending"])

    with httpx.Client(base_url=server.url, headers=auth, timeout=10) as http:
        for path in (
            "/api/v1/billing/credits",
            "/api/v1/billing/transactions",
            "/api/v1/usage",
            "/api/v1/guardrails/spending",
        ):
            response = http.get(path)
            assert response.status_code == 200, response.text
            seen |= six_decimals(path, response.json())
        spending = http.get("/api/v1/guardrails/spending")
        headers = {
            k: v for k, v in spending.headers.items() if k.lower().startswith("x-guardrails-")
        }
        assert headers.get("x-guardrails-60min") == "0.041146"
        seen |= six_decimals("X-GuardRails-* headers", headers)
        refused = http.post("/api/v1/guardrails/spending/check", json={"estimated_cost": "20"})
        assert refused.status_code == 402, refused.text
        seen |= six_decimals("402 problem body", refused.json())
        assert refused.json()["violations"][0]["limit"] == "10.000000"

    async def mcp() -> list[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            client = await _client(stack, server, server.alice, "legacy")
            return [
                await _call(client, "get_credits", {}),
                await _call(client, "get_spending_info", {}),
                await _call(client, "get_billing_transactions", {}),
                await _call(client, "check_spending_limit", {"estimated_cost": "0.5"}),
            ]

    for answer in asyncio.run(mcp()):
        seen |= six_decimals("MCP tool", answer)

    async def grpc_reason() -> str:
        async with Channel("127.0.0.1", grpc_port) as channel:
            stub = pb.GpuProxyServiceStub(channel, metadata={"x-api-key": server.alice})
            verdict = await stub.check_spending_limit(pb.CheckSpendingLimitRequest(amount=20.0))
        assert not verdict.allowed
        return verdict.reason

    reason = asyncio.run(grpc_reason())
    assert "limit 10.000000" in reason, reason
    seen |= six_decimals("gRPC reason", re.findall(r"-?\d+\.\d+", reason))

    capsys.readouterr()
    base = ["-server", server.url, "-key", server.alice]
    over_grpc = [*base, "--grpc", "--grpc-target", f"127.0.0.1:{grpc_port}"]
    for argv in (
        [*base, "credits", "--json"],
        [*base, "transactions", "--json"],
        [*base, "spending", "--json"],
        [*over_grpc, "credits", "--json"],
        [*over_grpc, "spending", "--json"],
    ):
        assert client_main(argv) == 0, argv
        seen |= six_decimals(f"CLI {' '.join(argv[4:])}", json.loads(capsys.readouterr().out))

    # the state's amounts were seen, in the one format (no "0.00", "1.25", "50.00")
    assert {"49.958854", "50.000000", "1.250000", "0.041146", "0.000000"} <= seen
