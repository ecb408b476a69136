"""Statement files (CSV, PDF): rendered from the one statement fold, and they reconcile."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pypdf import PdfReader

from domain.errors import InvalidArgumentError
from domain.statements import statement
from interfaces.statement_export import (
    CSV_COLUMNS,
    NO_HASH,
    split_format,
    statement_csv,
    statement_file,
    statement_pdf,
)

USD = 1_000_000


@dataclass
class Ev:
    name: str
    at: datetime
    data: dict[str, Any]


def _at(month: int, day: int) -> datetime:
    return datetime(2026, month, day, 10, tzinfo=UTC)


EVENTS = [
    Ev("Granted", _at(10, 20), {"amount": 10 * USD, "source": "payment", "reason": "card"}),
    Ev("Charged", _at(10, 21), {"amount": 1_234_567, "reference": "gpu-a", "reason": "GPU time"}),
    Ev("Granted", _at(11, 2), {"amount": 50 * USD, "source": "payment", "reason": "stripe"}),
    Ev("Granted", _at(11, 2), {"amount": 5 * USD, "source": "admin", "reason": "welcome"}),
    Ev("HoldPlaced", _at(11, 3), {"amount": 3 * USD, "hold_id": "h1", "reason": "proxy lease"}),
    Ev("HoldCaptured", _at(11, 4), {"amount": 2_500_001, "hold_id": "h1", "reason": ""}),
    Ev("Charged", _at(11, 4), {"amount": 999, "reference": "gpu-b", "reason": "GPU time"}),
    Ev("Charged", _at(11, 17), {"amount": 4 * USD, "reference": "gpu-b", "reason": "GPU time"}),
    Ev("Debited", _at(11, 20), {"amount": 7 * USD, "kind": "refund"}),
    Ev("Debited", _at(11, 21), {"amount": 1, "kind": "adjustment"}),
    Ev("Granted", _at(12, 1), {"amount": 99 * USD, "source": "payment"}),
]


def _micros(text: str) -> int:
    whole, frac = text.split(".")
    assert len(frac) == 6, text  # money with six decimals
    return int(whole) * USD + int(frac)


def test_the_fold_keeps_kinds_items_and_daily_spend() -> None:
    s = statement("2026-11", EVENTS)
    assert s.charges_by_kind == {"proxy lease": 2_500_001, "GPU time": 4 * USD + 999}
    assert sum(s.charges_by_kind.values()) == s.charges
    assert [i.bucket for i in s.items] == [
        "payments",
        "grants",
        "charges",
        "charges",
        "charges",
        "refunds",
        "adjustments",
    ]
    assert s.items[-1].balance == s.closing
    assert s.spend_by_day() == {
        "2026-11-04": {"proxy lease": 2_500_001, "GPU time": 999},
        "2026-11-17": {"GPU time": 4 * USD},
    }


def test_csv_parses_and_reconciles() -> None:
    rows = list(csv.DictReader(io.StringIO(statement_csv("ann@example.com", _nov()))))
    assert tuple(rows[0]) == CSV_COLUMNS
    items = [r for r in rows if r["record"] == "item"]
    summary = {r["type"]: _micros(r["amount_usd"]) for r in rows if r["record"] == "summary"}
    meta = {r["type"]: r["kind"] for r in rows if r["record"] == "meta"}
    by_kind = {r["kind"]: _micros(r["amount_usd"]) for r in rows if r["record"] == "by_kind"}
    assert meta["account"] == "ann@example.com"
    assert meta["month"] == "2026-11"
    assert meta["closing_hash"] == NO_HASH  # no chain on a bare fold
    opening = summary["opening_balance"]
    assert opening == 10 * USD - 1_234_567
    moved = {k: sum(_micros(r["amount_usd"]) for r in items if r["type"] == k) for k in summary}
    for bucket in ("payments", "grants", "charges", "refunds", "adjustments"):
        assert moved[bucket] == summary[bucket], bucket
    assert summary["closing_balance"] == (
        opening
        + summary["grants"]
        + summary["payments"]
        - summary["charges"]
        - summary["refunds"]
        - summary["adjustments"]
    )
    assert _micros(items[-1]["balance_usd"]) == summary["closing_balance"]
    assert sum(by_kind.values()) == summary["charges"]
    assert by_kind == {"GPU time": 4_000_999, "proxy lease": 2_500_001}


def _nov() -> Any:
    return statement("2026-11", EVENTS)


def _pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def test_pdf_holds_the_figures_hash_and_charts_and_reconciles() -> None:
    result = _nov()
    result.closing_hash = "ab" * 32
    text = _pdf_text(statement_pdf("ann@example.com", result))
    assert "Account: ann@example.com" in text
    assert "Period: 2026-11" in text
    assert f"Closing hash: {'ab' * 32}" in text
    assert "Balance over the month" in text
    assert "Spend per day by kind" in text
    lines = text.splitlines()

    def after(label: str) -> int:
        return _micros(lines[lines.index(label) + 1])

    opening, closing = after("opening_balance"), after("closing_balance")
    charges = after("charges")
    assert (opening, closing) == (result.opening, result.closing)
    assert (
        opening
        + after("grants")
        + after("payments")
        - charges
        - after("refunds")
        - after("adjustments")
        == closing
    )
    kinds = lines[lines.index("Charges by kind") : lines.index("Charges by instance")]
    assert after("GPU time") + after("proxy lease") == charges
    assert {"GPU time", "proxy lease"} <= set(kinds)
    instances = lines[lines.index("Charges by instance") :]
    assert "gpu-b" in instances
    assert after("gpu-b") == 4_000_999


def test_pdf_without_a_hash_shows_a_dash_and_escapes_the_account() -> None:
    text = _pdf_text(statement_pdf("a<b>&c@example.com", statement("2026-11", [])))
    assert f"Closing hash: {NO_HASH}" in text
    assert "Account: a<b>&c@example.com" in text
    assert re.search(r"closing_balance\s+0\.000000", text)


def test_file_names_and_formats() -> None:
    assert split_format("2026-11") == ("2026-11", "json")
    assert split_format("2026-11.csv") == ("2026-11", "csv")
    assert split_format("2026-11.pdf") == ("2026-11", "pdf")
    for bad, field in (("2026-11.xls", "format"), ("2026-13.pdf", "month"), ("x.csv", "month")):
        with pytest.raises(InvalidArgumentError) as caught:
            split_format(bad)
        assert caught.value.details["field"] == field
    data, disposition = statement_file("ann@example.com", _nov(), "csv")
    assert disposition == "attachment; filename=statement-2026-11.csv"
    assert data.startswith(b"record,at,type")
    data, disposition = statement_file("ann@example.com", _nov(), "pdf")
    assert disposition == "attachment; filename=statement-2026-11.pdf"
    assert data.startswith(b"%PDF-")
    assert statement_file("ann@example.com", _nov(), "pdf")[0] == data  # no creation date
