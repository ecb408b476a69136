"""``aiserve-gpuproxy-admin what-if``: an account's period (or every one's) under other rules."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from domain.errors import InvalidArgumentError
from domain.money import micros_to_usd
from domain.services.what_if import account_what_if
from domain.what_if import Rules, WhatIf, check_range
from interfaces.cli.common import fail, print_json
from interfaces.cli.output import print_table
from interfaces.what_if_view import (
    parse_limits,
    parse_markup,
    parse_time,
    parse_usd,
    what_if_json,
)

HELP = "replay a user's recorded charges under other limits, markup or prices (writes nothing)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("email", nargs="?", help="whose account (or --all-users)")
    p.add_argument("--all-users", action="store_true", help="every account: the totals")
    p.add_argument("--from", dest="start", required=True, help="YYYY-MM-DD or ISO time (UTC)")
    p.add_argument("--to", dest="end", required=True, help="YYYY-MM-DD or ISO time (UTC)")
    p.add_argument("--markup", help="GPU price markup in percent, e.g. 15")
    p.add_argument("--limits", help="the account's limits, e.g. 60min=10.00,72h=100.00")
    p.add_argument("--proxy-price", help="USD per proxied request, e.g. 0.001")
    p.add_argument("--prices", type=Path, help="JSON file: {GPU model: USD per GPU-hour}")


def rules_of(c: Any, args: argparse.Namespace) -> Rules:
    """The rules the options name; what they leave out stays as recorded (current settings)."""
    return Rules(
        policy=c.ledger.policy,
        limits=parse_limits(args.limits) if args.limits else None,
        markup_ppm=parse_markup(args.markup) if args.markup else None,
        recorded_markup_ppm=c.settings.marketplace.price_markup_ppm,
        proxy_price=parse_usd(args.proxy_price, "proxy_price") if args.proxy_price else None,
        recorded_proxy_price=c.settings.proxy.request_price,
        gpu_prices=_prices(args.prices) if args.prices else None,
    )


def _prices(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"--prices {path}: {exc}", field="prices") from None
    if not isinstance(data, dict):
        raise InvalidArgumentError("--prices must hold a JSON object", field="prices")
    return {str(model): parse_usd(price, f"prices.{model}") for model, price in data.items()}


def run(c: Any, args: argparse.Namespace) -> int:
    start, end = parse_time(args.start, "from"), parse_time(args.end, "to")
    check_range(start, end)
    rules = rules_of(c, args)
    if args.all_users:
        return _all_users(c, args, rules)
    if not args.email:
        fail("name an EMAIL or give --all-users", 2)
    user = c.users.by_email(args.email)
    data = what_if_json(user.id, account_what_if(c.ledger, user.id, start, end, rules))
    if args.json:
        print_json({"email": user.email, **data})
    else:
        _print(user.email, data)
    return 0


def _print(email: str, data: dict[str, Any]) -> None:
    real, what_if = data["real"], data["what_if"]
    table = Table("", "recorded", "what if", title=f"{email} {data['from']} to {data['to']} (USD)")
    for key in ("opening_balance", "bill", "closing_balance", "lowest_balance"):
        table.add_row(key, real[key], what_if[key])
    table.add_row("lowest at", real["lowest_balance_at"] or "", what_if["lowest_balance_at"] or "")
    table.add_row("refused", real["refused_total"], what_if["refused_total"])
    table.add_row(
        "auto-renews", str(len(real["auto_renew_at"])), str(len(what_if["auto_renew_at"]))
    )
    print_table(table)
    if what_if["refused"]:
        refused = Table("at (UTC)", "USD", "why", "windows", title="what-if refusals")
        for r in what_if["refused"]:
            refused.add_row(r["at"][:19], r["amount"], r["reason"], ", ".join(r["windows"]))
        print_table(refused)
    for label, times in (
        ("recorded", real["auto_renew_at"]),
        ("what if", what_if["auto_renew_at"]),
    ):
        if times:
            print(f"auto-renew ({label}): {', '.join(t[:19] for t in times)}")


def _all_users(c: Any, args: argparse.Namespace, rules: Rules) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    start, end = parse_time(args.start, "from"), parse_time(args.end, "to")
    totals = {"users": 0, "real_bill": 0, "what_if_bill": 0, "refused": 0, "refused_total": 0}
    totals |= {"users_refused": 0, "real_auto_renews": 0, "what_if_auto_renews": 0}
    users = c.users.all()
    columns = (TextColumn("what-if"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), disable=args.json) as progress:
        task = progress.add_task("users", total=len(users))
        for user in users:
            _add(totals, account_what_if(c.ledger, user.id, start, end, rules))
            progress.advance(task)
    shown: dict[str, Any] = {
        k: micros_to_usd(v) if k.endswith(("bill", "total")) else v for k, v in totals.items()
    }
    shown |= {"from": start.isoformat(), "to": end.isoformat(), "currency": "USD"}
    shown["difference"] = micros_to_usd(totals["what_if_bill"] - totals["real_bill"])
    if args.json:
        print_json(shown)
        return 0
    table = Table("total", "value", title=f"every account {shown['from']} to {shown['to']}")
    for key, value in shown.items():
        table.add_row(key, str(value))
    print_table(table)
    return 0


def _add(totals: dict[str, int], result: WhatIf) -> None:
    totals["users"] += 1
    totals["real_bill"] += result.real.bill
    totals["what_if_bill"] += result.replay.bill
    totals["refused"] += len(result.replay.refused)
    totals["refused_total"] += sum(r.amount for r in result.replay.refused)
    totals["users_refused"] += bool(result.replay.refused)
    totals["real_auto_renews"] += len(result.real.auto_renew_at)
    totals["what_if_auto_renews"] += len(result.replay.auto_renew_at)
