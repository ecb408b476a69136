"""GET /api/v1/billing/statements/{YYYY-MM}.csv and .pdf: the caller's own statement as a file."""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from pypdf import PdfReader

from infrastructure.settings import Settings
from interfaces.bootstrap import Container, bootstrap
from interfaces.http.app import create_app
from tests.conftest import FixedClock
from tests.support.http import JWT_SECRET

USD = 1_000_000


@pytest.fixture
def client(settings: Settings, clock: FixedClock) -> Iterator[tuple[TestClient[Any], Container]]:
    c = bootstrap(
        dataclasses.replace(
            settings, auth=dataclasses.replace(settings.auth, jwt_secret=JWT_SECRET)
        ),
        clock=clock,
    )
    try:
        with TestClient(create_app(c)) as test_client:
            yield test_client, c
    finally:
        c.close()


def _login(client: TestClient[Any], email: str) -> dict[str, str]:
    body = {"email": email, "password": "password-1", "name": "Statement"}
    client.post("/api/v1/auth/register", json=body)
    token = client.post("/api/v1/auth/login", json={k: body[k] for k in ("email", "password")})
    return {"Authorization": f"Bearer {token.json()['tokens']['access_token']}"}


def test_statement_files_are_the_callers_own_and_reconcile(
    client: tuple[TestClient[Any], Container], clock: FixedClock
) -> None:
    http, c = client
    auth = _login(http, "ann@example.com")
    other = _login(http, "bob@example.com")
    ann = c.users.by_email("ann@example.com").id
    bob = c.users.by_email("bob@example.com").id
    c.ledger.grant(ann, 20 * USD, key="g1", reason="welcome")
    c.ledger.grant(bob, 999 * USD, key="g-bob", reason="bob's")
    clock.advance(days=2)
    c.ledger.charge(ann, 1_234_567, key="c1", reference="gpu-x", reason="GPU time")
    clock.advance(days=1)
    c.ledger.charge(ann, 250_000, key="c2", reference="proxy", reason="proxy requests")
    month = clock().strftime("%Y-%m")
    base = f"/api/v1/billing/statements/{month}"

    as_json = http.get(base, headers=auth)
    assert as_json.status_code == 200
    assert as_json.json()["closing_balance"] == "18.515433"

    got = http.get(f"{base}.csv", headers=auth)
    assert got.status_code == 200, got.text
    assert got.headers["content-type"].startswith("text/csv")
    assert got.headers["content-disposition"] == f"attachment; filename=statement-{month}.csv"
    rows = list(csv.DictReader(io.StringIO(got.text)))
    summary = {r["type"]: r["amount_usd"] for r in rows if r["record"] == "summary"}
    assert summary["grants"] == "20.000000"
    assert summary["charges"] == "1.484567"
    assert summary["closing_balance"] == as_json.json()["closing_balance"]
    kinds = {r["kind"]: r["amount_usd"] for r in rows if r["record"] == "by_kind"}
    assert kinds == {"GPU time": "1.234567", "proxy requests": "0.250000"}
    assert "999.000000" not in got.text  # nothing of bob's

    pdf = http.get(f"{base}.pdf", headers=auth)
    assert pdf.status_code == 200, pdf.text
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == f"attachment; filename=statement-{month}.pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
    assert "Account: ann@example.com" in text
    assert "18.515433" in text
    assert "bob@example.com" not in text

    bobs = http.get(f"{base}.csv", headers=other).text
    assert "ann@example.com" not in bobs
    assert "999.000000" in bobs
    assert http.get(f"{base}.pdf").status_code == 401


@pytest.mark.parametrize(
    ("path", "field"),
    [("2026-13.csv", "month"), ("2026-11.xlsx", "format"), ("2026-11.", "format")],
)
def test_bad_month_or_format_is_400_naming_the_field(
    client: tuple[TestClient[Any], Container], path: str, field: str
) -> None:
    http, _ = client
    got = http.get(f"/api/v1/billing/statements/{path}", headers=_login(http, "c@example.com"))
    assert got.status_code == 400, got.text
    assert got.headers["content-type"].startswith("application/problem+json")
    body = got.json()
    assert field in {body.get("field"), *(e.get("field") for e in body.get("errors", []))}
