"""How the user CLI reports: one-line errors, tables that fit, JSON."""

from __future__ import annotations

import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 240  # tables written to a pipe or file are not wrapped at 80 columns


class CliError(Exception):
    """A one-line failure reported with exit code 1."""


def print_table(table: Table) -> None:
    out = Console()  # writes to whatever sys.stdout is now
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=PIPE_WIDTH)
    out.print(table)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))
