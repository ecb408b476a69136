"""Every door answers the same data for the same state (issue 23): transactions and rentals.

One process, one state (a grant, a charge, one rented sandbox instance and its hold), asked
through REST, the agent actions (A2A/MCP/LangChain call them), gRPC (``GrpcApi``, the
client CLI's ``--grpc`` transport, which turns the messages back into the REST shapes) and
the client CLI's ``--json`` output. Credits are checked the same way in
``test_presenter_doors.py`` and the spending report in ``test_spending_doors.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from litestar.testing import TestClient

from infrastructure.identity.auth import Principal
from infrastructure.settings import Settings
from interfaces.agents.base import NoArgs
from interfaces.agents.billing_actions import TransactionsArgs, get_billing_transactions
from interfaces.agents.gpu_actions import list_rentals
from interfaces.bootstrap import Container, ServingDoors, serving
from interfaces.cli import client as client_cli
from interfaces.grpc.client import GrpcApi
from interfaces.http.app import create_app
from tests.integration.test_grpc import in_process
from tests.support.http import JWT_SECRET

USD = 1_000_000
PASSWORD = "doors-password-1"


@dataclasses.dataclass
class World:
    c: Container
    doors: ServingDoors
    rest: TestClient[Any]
    auth: dict[str, str]
    principal: Principal
    grpc: GrpcApi


@pytest.fixture
def world(sqlite_settings: Settings) -> Iterator[World]:
    settings = dataclasses.replace(
        sqlite_settings,
        auth=dataclasses.replace(
            sqlite_settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
    )
    with in_process(settings) as (c, port):
        doors = serving(c)
        with TestClient(create_app(c, doors=doors)) as rest:
            user, auth = _user_with_token(rest, "doors@example.com")
            c.ledger.grant(user["id"], 20 * USD, key="funds", reason="top-up")
            c.ledger.charge(user["id"], 1_500_000, key="spend", reason="a fee")
            offers = rest.get("/api/v1/gpu/instances", params={"provider": "sandbox"}, headers=auth)
            offer = offers.json()["offers"][0]
            rented = rest.post(
                f"/api/v1/gpu/instances/sandbox/{offer['id']}", json={}, headers=auth
            )
            assert rented.status_code == 201, rented.text
            c.runner.catch_up()
            principal = c.auth.authenticate(None, auth["Authorization"], "")
            key = c.auth.keys.create(user["id"], "doors")[1]
            grpc = GrpcApi(f"127.0.0.1:{port}", key)
            try:
                yield World(c, doors, rest, auth, principal, grpc)
            finally:
                grpc.close()


def _user_with_token(rest: TestClient[Any], email: str) -> tuple[dict[str, Any], dict[str, str]]:
    body = {"email": email, "password": PASSWORD, "name": "Doors"}
    made = rest.post("/api/v1/auth/register", json=body)
    assert made.status_code == 201, made.text
    login = rest.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    token = login.json()["tokens"]["access_token"]
    return made.json()["user"], {"Authorization": f"Bearer {token}"}


def _agent(world: World, action: Any, args: Any) -> Any:
    return asyncio.run(action(world.c, world.doors.proxy, world.principal, args))


def _cli(world: World, monkeypatch: pytest.MonkeyPatch, capsys: Any, *argv: str) -> Any:
    """The client CLI's ``--json`` output, its API calls answered by the REST door."""

    class InProcessApi(client_cli.Api):
        def __init__(self) -> None:  # no HTTP client of its own: the test client answers
            pass

        def get(self, path: str, **params: Any) -> Any:
            found = {k: v for k, v in params.items() if v is not None}
            answer = world.rest.get(path, params=found, headers=world.auth)
            assert answer.status_code == 200, answer.text
            return answer.json()

        def close(self) -> None:
            pass

    monkeypatch.setattr(client_cli, "_connect", lambda _args, _debug: InProcessApi())
    capsys.readouterr()
    assert client_cli.main(["--key", "unused", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_door_lists_the_same_transactions(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    rest = world.rest.get("/api/v1/billing/transactions", headers=world.auth).json()
    kinds = [t["type"] for t in rest["transactions"]]
    assert {"grant", "charge", "hold"} <= set(kinds), kinds  # the rental's hold is one of them
    assert _agent(world, get_billing_transactions, TransactionsArgs()) == rest
    assert _cli(world, monkeypatch, capsys, "transactions") == rest
    grpc = world.grpc.get("/api/v1/billing/transactions")
    assert grpc["next_before"] == rest["next_before"]
    assert len(grpc["transactions"]) == len(rest["transactions"])
    for by_grpc, by_rest in zip(grpc["transactions"], rest["transactions"], strict=True):
        # gRPC carries money as a double: the same amount, to the micro-dollar
        assert Decimal(by_grpc.pop("amount")) == Decimal(by_rest["amount"])
        assert by_grpc == {k: v for k, v in by_rest.items() if k != "amount"}


def test_every_door_lists_the_same_rentals(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    rest = world.rest.get("/api/v1/gpu/rentals", headers=world.auth).json()
    assert [r["provider"] for r in rest["rentals"]] == ["sandbox"]
    agent = _agent(world, list_rentals, NoArgs())
    assert agent == {**rest, "count": len(rest["rentals"])}
    assert _cli(world, monkeypatch, capsys, "rentals") == rest
    grpc = world.grpc.get("/api/v1/gpu/rentals")
    assert [r["id"] for r in grpc["rentals"]] == [r["id"] for r in rest["rentals"]]
    for by_grpc, by_rest in zip(grpc["rentals"], rest["rentals"], strict=True):
        same = {k for k in by_rest if k in by_grpc and k not in {"cost_so_far", "price_per_hour"}}
        assert {k: by_grpc[k] for k in same} == {k: by_rest[k] for k in same}
        assert Decimal(by_grpc["price_per_hour"]) == Decimal(by_rest["price_per_hour"])
