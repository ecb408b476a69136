"""Admin CLI commands for usage: daily usage, usage sessions, what-if replays."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rich.table import Table

from interfaces.cli import sessions_commands, what_if_commands
from interfaces.cli.admin.base import _container
from interfaces.cli.common import print_json, usd
from interfaces.cli.output import print_table


def cmd_usage(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        c.runner.catch_up()
        days = c.queries.usage(user.id, args.since, args.until)
    finally:
        c.close()
    if args.json:
        print_json(
            [
                {
                    **asdict(d),
                    "spent": usd(d.spent),
                    "granted": usd(d.granted),
                    "debited": usd(d.debited),
                }
                for d in days
            ]
        )
        return 0
    table = Table(
        "day (UTC)",
        "spent USD",
        "spends",
        "granted USD",
        "debited USD",
        title=f"daily usage of {user.email}",
    )
    for d in days:
        table.add_row(d.day, usd(d.spent), str(d.spend_count), usd(d.granted), usd(d.debited))
    print_table(table)
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        sessions_commands.admin_sessions(c, args)
    finally:
        c.close()
    return 0


def cmd_what_if(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        return what_if_commands.run(c, args)
    finally:
        c.close()
