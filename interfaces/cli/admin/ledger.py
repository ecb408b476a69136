"""Admin CLI commands on accounts: grants, balance (now or at an instant), guard-rail spending,
resets, limits, caps, crypto transfers."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from domain.guardrails import SpendingReport, normalise_window
from domain.services.ledger import AccountView
from interfaces.cli.admin.base import _actor, _container, _settle, _usd
from interfaces.cli.common import fail, print_json, usd
from interfaces.cli.output import money, print_table
from interfaces.spending_view import spending_json


def cmd_grant(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        outcome = c.ledger.grant(
            user.id,
            args.amount,
            key=args.idempotency_key or f"admin-grant:{uuid.uuid4()}",
            source="admin",
            reason=args.reason,
            actor=_actor(),
        )
        view = c.ledger.account(user.id)
    finally:
        _settle(c)
    if args.json:
        print_json(
            {
                "user_id": user.id,
                "email": user.email,
                "granted": usd(args.amount),
                "applied": outcome.applied,
                "credits_remaining": usd(view.balance),
            }
        )
        return 0
    verb = "granted" if outcome.applied else "already granted (same idempotency key)"
    print(f"{verb} {money(args.amount)} USD to {user.email}; balance {money(view.balance)} USD")
    return 0


def _view_dict(view: AccountView) -> dict[str, Any]:
    return {
        "user_id": view.user_id,
        "as_of": view.as_of,
        "version": view.version,
        "credits_remaining": usd(view.balance),
        "credits_available": usd(view.available),
        "credits_held": usd(view.held),
        "credits_total": usd(view.total_granted),
        "credits_charged": usd(view.total_charged),
        "credits_debited": usd(view.total_debited),
        "credits_overage": usd(view.overage),
        "credits_cap": usd(view.cap),
        "credits_auto_renew": {
            **view.auto_renew,
            "threshold": usd(view.auto_renew["threshold"]),
            "amount": usd(view.auto_renew["amount"]),
        },
        "holds": [
            {
                "hold_id": h.hold_id,
                "amount": usd(h.amount),
                "captured": usd(h.captured),
                "expires_at": h.expires_at,
            }
            for h in view.holds
        ],
        "limits": {k: usd(v) for k, v in view.effective_limits.items()},
        "spent": {k: usd(v) for k, v in view.window_spend.items()},
    }


def cmd_balance(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        view = c.ledger.account_at(user.id, args.at) if args.at else c.ledger.account(user.id)
    finally:
        c.close()
    data = _view_dict(view)
    if args.json:
        print_json(data)
        return 0
    table = Table(title=f"{user.email} as of {view.as_of.isoformat()} (version {view.version})")
    table.add_column("field")
    table.add_column("USD", justify="right")
    for key in (
        "credits_remaining",
        "credits_available",
        "credits_held",
        "credits_total",
        "credits_charged",
        "credits_debited",
        "credits_overage",
        "credits_cap",
    ):
        table.add_row(key, str(data[key]))
    print_table(table)
    if view.holds:
        holds = Table("hold", "USD", "captured USD", "expires")
        for h in view.holds:
            holds.add_row(h.hold_id, usd(h.amount), usd(h.captured), h.expires_at.isoformat())
        print_table(holds)
    _print_windows(view.spending)
    return 0


def cmd_crypto_transfers(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        transfers = c.payment_queries.crypto_transfers(unclaimed=args.unclaimed, limit=args.limit)
    finally:
        c.close()
    rows = [
        {
            "ref": t.ref,
            "network": t.network,
            "sender": t.sender,
            "amount": usd(t.amount),
            "block": t.block,
            "payment_id": t.payment_id or None,
            "kind": t.kind,
            "seen_at": datetime.fromtimestamp(t.seen_at / 1e6, UTC).isoformat(timespec="seconds"),
        }
        for t in transfers
    ]
    if args.json:
        print_json(rows)
        return 0
    title = "crypto transfers credited to no one" if args.unclaimed else "crypto transfers"
    table = Table("seen", "network", "sender", "USD", "kind", "payment", "ref", title=title)
    for r in rows:
        table.add_row(
            str(r["seen_at"]),
            str(r["network"]),
            str(r["sender"]),
            str(r["amount"]),
            str(r["kind"]),
            str(r["payment_id"] or "-"),
            str(r["ref"]),
        )
    print_table(table)
    return 0


def _print_windows(report: SpendingReport) -> None:
    table = Table(
        "window",
        "spent USD",
        "held USD",
        "limit USD",
        "remaining USD",
        title=f"as of {report.as_of.isoformat()}",
    )
    for w in report.windows:
        limit, remaining = (usd(w.limit), usd(w.remaining)) if w.limited else ("off", "")
        table.add_row(w.window, usd(w.spent), usd(w.held), limit, remaining)
    print_table(table)


def cmd_spending(args: argparse.Namespace) -> int:
    """What a charge would be told now: spend and holds per window, at the service's clock."""
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        report = c.ledger.spending(user.id)
    finally:
        c.close()
    if args.json:
        body = spending_json(report)
        print_json({"enabled": report.enabled, "spent": body["window_spent"], **body})
        return 0
    _print_windows(report)
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        windows = [args.window] if args.window else None
        c.ledger.reset_windows(user.id, windows, actor=_actor(), reason=args.reason)
    finally:
        _settle(c)
    if args.json:
        print_json({"user_id": user.id, "email": user.email, "reset": windows or "all"})
    else:
        print(f"reset {args.window or 'all windows'} for {user.email} (reason recorded)")
    return 0


def cmd_set_limits(args: argparse.Namespace) -> int:
    changes: dict[str, int | None] = {}
    for item in args.limits:
        window, sep, value = item.partition("=")
        if not sep:
            fail(f"{item!r} is not WINDOW=USD (e.g. 60min=100.00, or 60min=default)", 2)
        try:
            name = normalise_window(window)
        except ValueError as exc:
            fail(str(exc), 2)
        changes[name] = None if value.strip().lower() == "default" else _usd(value)
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        c.ledger.set_limits(user.id, changes, actor=_actor(), reason=args.reason)
    finally:
        _settle(c)
    if args.json:
        limits = {k: None if v is None else usd(v) for k, v in changes.items()}
        print_json({"user_id": user.id, "email": user.email, "limits": limits})
    else:
        print(f"limits updated for {user.email}")
    return 0


def cmd_set_cap(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        c.ledger.set_cap(user.id, args.cap, actor=_actor(), reason=args.reason)
    finally:
        _settle(c)
    if args.json:
        print_json({"user_id": user.id, "email": user.email, "cap": usd(args.cap)})
    else:
        print(f"overage cap for {user.email} is now {money(args.cap)} USD")
    return 0
