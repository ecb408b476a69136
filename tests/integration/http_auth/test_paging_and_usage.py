"""Transactions paging (newest first, cursors, bad paging) and usage filtered by day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infrastructure.settings import Settings
from tests.support.http_auth import (
    Client,
    assert_problem,
    container_of,
    user_with_token,
)


def test_transactions_page_newest_first(client: Client) -> None:
    user, auth = user_with_token(client, "pages@example.com")
    c = container_of(client)
    for i in range(1, 6):
        c.ledger.grant(user["id"], i * 1_000_000, key=f"g{i}", reason=f"grant {i}")
    c.runner.catch_up()

    seen: list[dict[str, Any]] = []
    pages = 0
    url = "/api/v1/billing/transactions?limit=2"
    while True:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["transactions"]) <= 2
        seen += page["transactions"]
        if page["next_before"] is None:
            break
        assert page["next_before"] == page["transactions"][-1]["id"]
        url = f"/api/v1/billing/transactions?limit=2&before={page['next_before']}"
        assert pages < 10
    assert pages == 3
    ids = [t["id"] for t in seen]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 5
    assert [t["amount"] for t in seen] == [
        "5.000000",
        "4.000000",
        "3.000000",
        "2.000000",
        "1.000000",
    ]
    first = seen[0]
    assert set(first) == {"id", "type", "amount", "hold_id", "reason", "reference", "created_at"}
    assert first["reason"] == "grant 5"
    datetime.fromisoformat(first["created_at"])
    everything = client.get("/api/v1/billing/transactions", headers=auth).json()
    assert len(everything["transactions"]) == 5
    assert everything["next_before"] is None


@pytest.fixture(scope="module")
def badpage(shared_client: Client) -> dict[str, str]:
    """A user's headers on the module's shared app (bad paging only reads)."""
    return user_with_token(shared_client, "badpage@example.com")[1]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=1000", "limit"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("before=0", "before"),
        ("before=-3", "before"),
        ("before=abc", "before"),
    ],
)
def test_transactions_refuse_bad_paging(
    shared_client: Client, badpage: dict[str, str], query: str, field: str
) -> None:
    response = shared_client.get(f"/api/v1/billing/transactions?{query}", headers=badpage)
    assert_problem(response, 400, field)


def test_transactions_refuse_a_cursor_beyond_64_bits(
    client: Client, request: pytest.FixtureRequest, settings: Settings
) -> None:
    _, auth = user_with_token(client, "bigcursor@example.com")
    response = client.get(
        "/api/v1/billing/transactions?before=99999999999999999999999", headers=auth
    )
    assert response.status_code < 500, response.text


def test_usage_filters_by_day(client: Client) -> None:
    user, auth = user_with_token(client, "usage@example.com")
    c = container_of(client)
    c.ledger.grant(user["id"], 4_000_000, key="u1", reason="usage")
    c.runner.catch_up()
    today = datetime.now(UTC).date()
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)

    days = client.get("/api/v1/usage", headers=auth).json()["days"]
    assert len(days) == 1
    assert days[0]["day"] == today.isoformat()
    assert days[0]["granted"] == "4.000000"
    assert set(days[0]) == {"day", "spent", "requests", "granted", "debited"}
    inside = client.get(f"/api/v1/usage?since={yesterday}&until={tomorrow}", headers=auth)
    assert [d["day"] for d in inside.json()["days"]] == [today.isoformat()]
    same_day = client.get(f"/api/v1/usage?since={today}&until={today}", headers=auth)
    assert len(same_day.json()["days"]) == 1
    after = client.get(f"/api/v1/usage?since={tomorrow}", headers=auth)
    assert after.json()["days"] == []
    before = client.get(f"/api/v1/usage?until={yesterday}", headers=auth)
    assert before.json()["days"] == []

    bad = [
        (f"since={tomorrow}&until={yesterday}", "since"),
        ("since=2026-13-01", "since"),
        ("since=yesterday", "since"),
        ("until=2026-02-30", "until"),
        ("until=20260101", "until"),
    ]
    for query, field in bad:
        assert_problem(client.get(f"/api/v1/usage?{query}", headers=auth), {400}, field)
