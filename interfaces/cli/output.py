"""How the CLIs report: one-line errors, tables on a terminal, full-value TSV in pipes, JSON.

Money in tables and messages has exactly six decimals (``money``); in a table, every cell of a
column whose header names ``USD`` is shown that way, so no amount reads ``0.00`` beside
``49.958854``. ``--json`` keeps the API's strings as the server sent them.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from domain.errors import DomainError
from domain.money import format_usd, usd_to_micros


class CliError(Exception):
    """A one-line failure reported with exit code 1."""


def to_terminal() -> bool:
    """Whether stdout is a terminal (as rich sees it: ``FORCE_TERMINAL``/``TTY_COMPATIBLE``)."""
    return Console().is_terminal


def money(value: object) -> str:
    """A USD amount (micro-USD int, or a decimal string) with six decimals; other text as is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return format_usd(value)
    text = str(value)
    try:
        return format_usd(usd_to_micros(text)) if text.strip() else text
    except DomainError:  # "off", "on (...)", "-": not an amount
        return text


def _money_columns(table: Table) -> None:
    for column in table.columns:
        if "USD" in str(column.header):
            cells = column.cells
            column._cells = [money(cell) if isinstance(cell, str) else cell for cell in cells]


def print_table(table: Table) -> None:
    """A rich table on a terminal; elsewhere (a pipe, a file) TSV with every value whole.

    The TSV has one header line and one line per row; tabs and line breaks inside a value
    become spaces, so ``| grep``, ``| cut -f`` and copy-paste see full emails and ids.
    """
    _money_columns(table)
    if to_terminal():
        Console().print(table)
        return
    columns = table.columns
    lines = ["\t".join(_cell(c.header) for c in columns)]
    rows = zip(*(c.cells for c in columns), strict=True)
    lines += ["\t".join(_cell(cell) for cell in row) for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else str(getattr(value, "plain", value))
    return " ".join(text.replace("\t", " ").splitlines())


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
