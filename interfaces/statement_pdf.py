"""The statement PDF, laid out with reportlab's platypus and drawn with reportlab.graphics."""

from __future__ import annotations

import io
from calendar import monthrange
from xml.sax.saxutils import escape

from reportlab.graphics.charts.barcharts import VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import getSampleStyleSheet
from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from domain.money import micros_to_usd
from domain.statements import Statement
from interfaces.statement_export import SUMMARY, balance_points, closing_hash

PALETTE = (colors.steelblue, colors.darkorange, colors.seagreen, colors.firebrick, colors.purple)
GRID = TableStyle(
    [
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.whitesmoke),
        ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
    ]
)


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> Table:
    table = Table([header, *rows] if rows else [header, ("none", "0.000000")], hAlign="LEFT")
    table.setStyle(GRID)
    return table


def _balance_chart(result: Statement) -> Drawing:
    drawing = Drawing(480, 190)
    drawing.add(String(0, 175, "Balance over the month (USD)", fontSize=10))
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = 60, 25, 400, 140
    plot.data = [balance_points(result)]
    plot.lines[0].strokeColor = colors.steelblue
    plot.xValueAxis.valueMin = 1
    plot.xValueAxis.valueMax = monthrange(int(result.month[:4]), int(result.month[5:]))[1] + 1
    drawing.add(plot)
    return drawing


def _spend_chart(result: Statement) -> Drawing:
    days = monthrange(int(result.month[:4]), int(result.month[5:]))[1]
    by_day = result.spend_by_day()
    kinds = sorted(result.charges_by_kind) or ["charges"]
    drawing = Drawing(480, 210)
    drawing.add(String(0, 195, "Spend per day by kind (USD)", fontSize=10))
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 60, 45, 400, 140
    chart.categoryAxis.style = "stacked"
    chart.categoryAxis.categoryNames = [str(d) if d % 5 == 1 else "" for d in range(1, days + 1)]
    chart.data = [
        [by_day.get(f"{result.month}-{d:02d}", {}).get(kind, 0) / 1e6 for d in range(1, days + 1)]
        for kind in kinds
    ]
    for i in range(len(kinds)):
        chart.bars[i].fillColor = PALETTE[i % len(PALETTE)]
    chart.valueAxis.valueMin = 0
    drawing.add(chart)
    legend = Legend()
    legend.x, legend.y, legend.columnMaximum = 60, 15, 1
    legend.alignment = "right"
    legend.deltax = 110
    legend.colorNamePairs = [(PALETTE[i % len(PALETTE)], k) for i, k in enumerate(kinds)]
    drawing.add(legend)
    return drawing


def render(account: str, result: Statement) -> bytes:
    """The whole statement as PDF bytes (no creation date: the same statement, the same file)."""
    styles = getSampleStyleSheet()
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(buffer, pagesize=A4, title=f"Statement {result.month}", invariant=1)
    summary = [(line, micros_to_usd(getattr(result, name))) for line, name in SUMMARY.items()]
    story = [
        Paragraph(f"Statement {result.month}", styles["Title"]),
        Paragraph(f"Account: {escape(account)}", styles["Normal"]),
        Paragraph(f"Period: {result.month} (UTC), currency USD", styles["Normal"]),
        Paragraph(f"Closing hash: {escape(closing_hash(result))}", styles["Normal"]),
        Spacer(1, 10),
        _table(("line", "USD"), summary),
        Spacer(1, 10),
        Paragraph("Charges by kind", styles["Heading3"]),
        _table(("kind", "USD"), [(k, micros_to_usd(v)) for k, v in result.charges_by_kind.items()]),
        Paragraph("Charges by instance", styles["Heading3"]),
        _table(
            ("instance", "USD"),
            [(k, micros_to_usd(v)) for k, v in result.charges_by_reference.items()],
        ),
        Spacer(1, 10),
        _balance_chart(result),
        _spend_chart(result),
    ]
    if not result.reconciles:
        story.insert(4, Paragraph("This statement does not reconcile.", styles["Normal"]))
    doc.build(story)
    return buffer.getvalue()
