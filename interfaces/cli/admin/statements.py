"""Admin CLI commands for statements and audit: monthly statements (table, CSV, PDF), hash
chain verification, the audit trail."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from interfaces.cli.admin.base import _container, console
from interfaces.cli.common import print_json
from interfaces.cli.output import money, print_table
from interfaces.statement_view import build_statement, statement_dict


def cmd_verify_statements(args: argparse.Namespace) -> int:
    """Recompute recorded statement hash chains from the event store; 1 if any differs."""
    from infrastructure.eventstore.statement_hashes import StatementHashes, verify

    c = _container(args)
    try:
        user_id = c.users.by_email(args.email).id if args.email else None
        verdicts = verify(c.app, StatementHashes(c.db), user_id, args.month)
    finally:
        c.close()
    bad = [v for v in verdicts if v.problem]
    if args.json:
        print_json([v.__dict__ for v in verdicts])
    else:
        for v in verdicts:
            console.print(f"{v.user_id} {v.month} {v.problem or 'ok ' + v.closing_hash}")
        console.print(f"{len(verdicts)} statement(s) checked, {len(bad)} tampered")
    return 1 if bad else 0


def _write_statement_file(account: str, result: Any, fmt: str, output: str | None) -> int:
    """CSV to stdout or ``--output``; a PDF to ``--output`` or ./statement-YYYY-MM.pdf."""
    from interfaces.statement_export import statement_file

    data, disposition = statement_file(account, result, fmt)
    if fmt == "csv" and output in (None, "-"):
        sys.stdout.write(data.decode())
        return 0
    path = output or disposition.split("filename=", 1)[1]
    with open(path, "wb") as out:
        out.write(data)
    console.print(f"wrote {path}")
    return 0


def cmd_statement(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        result = build_statement(c, user.id, args.month)
    finally:
        c.close()
    if args.format:
        return _write_statement_file(user.email, result, args.format, args.output)
    data = statement_dict(user.id, result)
    if args.json:
        print_json(data)
        return 0
    table = Table(title=f"{user.email} statement {args.month} (USD)")
    table.add_column("line")
    table.add_column("USD", justify="right")
    for key in ("opening_balance", "payments", "grants", "charges", "refunds", "adjustments"):
        table.add_row(key, str(data[key]))
    for instance, amount in data["charges_by_instance"].items():
        table.add_row(f"  charges {instance}", str(amount))
    table.add_row("closing_balance", str(data["closing_balance"]))
    print_table(table)
    console.print(f"opening hash {data['opening_hash']}\nclosing hash {data['closing_hash']}")
    if not data["reconciles"]:
        console.print("[red]does not reconcile[/red]")
        return 1
    return 0


def _describe(data: dict[str, Any]) -> str:
    parts = []
    for key, value in data.items():
        if key in {"amount", "cap", "threshold", "available", "bucket_amount"} and isinstance(
            value, int
        ):
            parts.append(f"{key}={money(value)}")
        elif key == "originator_topic" or value in ("", None):
            continue
        elif isinstance(value, datetime):
            parts.append(f"{key}={value.isoformat()}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def cmd_audit(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        entries = c.ledger.history(user.id, since=args.since, until=args.until, limit=args.limit)
        security = c.users.security_events(user.id)
    finally:
        c.close()
    if args.json:
        print_json(
            {
                "user": asdict(user),
                "events": [asdict(e) for e in entries],
                "security_events": [
                    {"at": a, "actor": b, "action": d, "detail": e} for a, b, d, e in security
                ],
            }
        )
        return 0
    table = Table("v", "time (UTC)", "event", "details", title=f"ledger events of {user.email}")
    for e in entries:
        table.add_row(
            str(e.version),
            e.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            e.name,
            _describe(e.data),
        )
    print_table(table)
    if security:
        sec = Table("time (UTC)", "actor", "action", title="security events")
        for at, actor, action, _detail in security:
            sec.add_row(at[:23], actor, action)
        print_table(sec)
    return 0
