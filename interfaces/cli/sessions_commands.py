"""``sessions`` for both CLIs: usage sessions (client, address, time, requests, credits)."""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from interfaces.cli.output import print_json, print_table


def sessions_table(page: dict[str, Any], title: str = "usage sessions") -> Table:
    """One row per session of a ``GET /api/v1/usage/sessions`` page (newest first)."""
    table = Table(
        "id",
        "started (UTC)",
        "ended (UTC)",
        "seconds",
        "credential",
        "client id",
        "address",
        "requests",
        "proxy USD",
        "models USD",
        "GPU USD",
        "total USD",
        "user agent",
        title=title,
    )
    for s in page["sessions"]:
        spent = s["credits_spent"]
        table.add_row(
            s["id"],
            s["started_at"][:19],
            s["ended_at"][:19],
            f"{s['duration_seconds']:.0f}",
            s["credential"],
            s["client_id"],
            s["ip_address"],
            str(s["requests"]),
            spent["proxy_fees"],
            spent["model_predictions"],
            spent["gpu_time"],
            spent["total"],
            s["user_agent"],
        )
    return table


def print_sessions(page: dict[str, Any], as_json: bool, title: str = "usage sessions") -> None:
    if as_json:
        print_json(page)
        return
    print_table(sessions_table(page, title))
    if page.get("next_before"):
        print(f"more: --before {page['next_before']}")


def show_sessions(api: Any, args: argparse.Namespace) -> None:
    """``aiserve-gpuproxy-client sessions``: the caller's own sessions."""
    page = api.get("/api/v1/usage/sessions", limit=args.limit, before=args.before)
    print_sessions(page, args.json)


def add_paging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--limit", type=_page_size, default=20, help="sessions per page (1-500)")
    p.add_argument("--before", type=_cursor, help="the cursor a previous page printed")


def admin_sessions(c: Any, args: argparse.Namespace) -> None:
    """``aiserve-gpuproxy-admin sessions EMAIL``: any user's sessions, from the read model."""
    from infrastructure.readmodels.queries.usage_sessions import usage_sessions
    from interfaces.usage_sessions_view import page_json

    user = c.users.by_email(args.email)
    c.runner.catch_up()
    rows = usage_sessions(c.db, user.id, limit=args.limit, before=args.before)
    print_sessions(page_json(rows, args.limit), args.json, f"usage sessions of {user.email}")


def _page_size(text: str) -> int:
    value = _cursor(text)
    if value > 500:
        raise argparse.ArgumentTypeError("must be 1-500")
    return value


def _cursor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
