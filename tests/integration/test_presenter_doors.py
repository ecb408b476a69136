"""One presenter per answer (issue 23): every door answers the same credits for the same state.

REST (the fast lane; tests/integration/test_fast_lane.py compares it with Litestar's route),
the agent/MCP action and the admin view of the user all render
``interfaces.presenters.credits.present_credits``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import msgspec
from litestar.testing import TestClient

from infrastructure.settings import Settings
from interfaces.agents.base import NoArgs
from interfaces.agents.billing_actions import get_credits
from interfaces.bootstrap import bootstrap
from interfaces.http.app import create_app
from interfaces.presenters.credits import present_credits
from tests.support.http import JWT_SECRET
from tests.support.http_auth import make_admin, user_with_token

USD = 1_000_000
CREDITS = "/api/v1/billing/credits"


def test_every_door_answers_the_same_credits(settings: Settings) -> None:
    settings = dataclasses.replace(
        settings,
        auth=dataclasses.replace(
            settings.auth, jwt_secret=JWT_SECRET, rate_limit_per_minute=100_000
        ),
    )
    container = bootstrap(settings)
    try:
        with TestClient(create_app(container)) as fast:
            user, auth = user_with_token(fast, "doors@example.com")
            container.ledger.grant(user["id"], 12 * USD, key="funds")
            container.ledger.charge(user["id"], 2_500_000, key="spend")
            container.runner.catch_up()
            principal = container.auth.authenticate(None, auth["Authorization"], "")

            expected: dict[str, Any] = msgspec.to_builtins(
                present_credits(container.queries.balance(user["id"]))
            )
            assert expected["credits_remaining"] == "9.500000"
            assert fast.get(CREDITS, headers=auth).json() == expected
            agent = asyncio.run(get_credits(container, None, principal, NoArgs()))  # type: ignore[arg-type]
            assert agent == expected
            admin = make_admin(fast, "boss@example.com")
            view = fast.get(f"/api/v1/admin/users/{user['id']}", headers=admin).json()
            assert view["credits"] == expected
    finally:
        container.close()
