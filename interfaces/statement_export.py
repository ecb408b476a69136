"""A monthly statement as a file to hand on: CSV and PDF (docs/statements.md).

Both render a ``domain.statements.Statement`` (built by ``statement_view.build_statement``);
nothing here adds up money: per-kind and per-day sums come from the statement itself.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from domain.errors import InvalidArgumentError
from domain.money import micros_to_usd
from domain.statements import Statement, month_bounds

CSV_COLUMNS = ("record", "at", "type", "kind", "reference", "amount_usd", "balance_usd")
# CSV/PDF line name -> Statement field, in statement order
SUMMARY = {
    "opening_balance": "opening",
    "payments": "payments",
    "grants": "grants",
    "charges": "charges",
    "refunds": "refunds",
    "adjustments": "adjustments",
    "closing_balance": "closing",
}
FORMATS = {"csv": "text/csv; charset=utf-8", "pdf": "application/pdf"}
NO_HASH = "—"


def closing_hash(result: Statement) -> str:
    """The closing hash of the month's event chain (docs/events.md), or a dash if not built."""
    return result.closing_hash or NO_HASH


def split_format(value: str) -> tuple[str, str]:
    """'2026-11.pdf' -> ('2026-11', 'pdf'); '2026-11' -> ('2026-11', 'json'); 400s name the
    field (month or format)."""
    month, dot, fmt = value.partition(".")
    if not dot:
        return month, "json"
    if fmt not in FORMATS:
        raise InvalidArgumentError("format must be .csv or .pdf", field="format")
    month_bounds(month)  # a bad month is a 400 naming "month" before any rendering
    return month, fmt


def statement_file(account: str, result: Statement, fmt: str) -> tuple[bytes, str]:
    """The file's bytes and its Content-Disposition value (attachment; filename=...)."""
    if fmt == "csv":
        data = statement_csv(account, result).encode()
    else:
        data = statement_pdf(account, result)
    return data, f"attachment; filename=statement-{result.month}.{fmt}"


def statement_csv(account: str, result: Statement) -> str:
    """One ``item`` row per balance move, then ``summary``, ``by_kind``, ``by_instance`` and
    ``meta`` rows; amounts in USD with six decimals."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for item in result.items:
        writer.writerow(
            (
                "item",
                item.at.isoformat(),
                item.bucket,
                item.kind,
                item.reference,
                micros_to_usd(item.amount),
                micros_to_usd(item.balance),
            )
        )
    for line, name in SUMMARY.items():
        writer.writerow(("summary", "", line, "", "", micros_to_usd(getattr(result, name)), ""))
    for kind, amount in sorted(result.charges_by_kind.items()):
        writer.writerow(("by_kind", "", "charges", kind, "", micros_to_usd(amount), ""))
    for ref, amount in sorted(result.charges_by_reference.items()):
        writer.writerow(("by_instance", "", "charges", "", ref, micros_to_usd(amount), ""))
    for key, value in (
        ("account", account),
        ("month", result.month),
        ("currency", "USD"),
        ("closing_hash", closing_hash(result)),
        ("reconciles", str(result.reconciles).lower()),
    ):
        writer.writerow(("meta", "", key, value, "", "", ""))
    return out.getvalue()


def balance_points(result: Statement) -> list[tuple[float, float]]:
    """(day of month, USD balance) from the opening through each move to the month's end."""
    start, end = month_bounds(result.month)
    day = timedelta(days=1)
    points = [(1.0, result.opening / 1e6)]
    points += [(1 + (i.at - start) / day, i.balance / 1e6) for i in result.items]
    points.append((1 + (end - start) / day, result.closing / 1e6))
    return points


def statement_pdf(account: str, result: Statement) -> bytes:
    """A PDF with the figures, charges by kind and instance, and two charts."""
    from interfaces.statement_pdf import render  # reportlab loads only when a PDF is asked for

    return render(account, result)
