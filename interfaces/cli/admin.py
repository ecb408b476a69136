"""``aiserve-gpuproxy-admin``: the operator CLI (users, credits, audit, replay, projections)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from domain.errors import DomainError
from domain.guardrails import SpendingReport, normalise_window
from domain.money import usd_to_micros
from domain.services.ledger import AccountView
from domain.statements import month_bounds
from interfaces.cli import event_archive_commands, sessions_commands, what_if_commands
from interfaces.cli.common import OneLineParser, fail, parse_time, print_json, usd
from interfaces.cli.output import money, print_table, to_terminal
from interfaces.spending_view import spending_json
from interfaces.statement_view import build_statement, statement_dict

console = Console()
BAD_INPUT = frozenset({400, 422})  # exit 2 like an argparse error; any other refusal exits 1
Handler = Callable[[argparse.Namespace], int]


def _actor() -> str:
    try:
        return f"admin-cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "admin-cli"


def _container(args: argparse.Namespace, *, migrate: bool = False) -> Any:
    from infrastructure.settings import load_settings
    from interfaces.bootstrap import bootstrap

    settings = load_settings(env_file=args.env_file)
    if not migrate:
        from infrastructure.db.migrate import pending
        from interfaces.bootstrap import open_database

        db = open_database(settings)
        try:
            if pending(db):
                fail("the database schema is not up to date; run `aiserve-gpuproxy-admin migrate`")
        finally:
            db.close()
    return bootstrap(settings, migrate=migrate)


def _settle(c: Any) -> None:
    """Bring the read models up to date with what this command wrote, then close."""
    try:
        c.runner.catch_up()
    finally:
        c.close()


def _page_size(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {value!r}")
    return size


def _usd(value: str) -> int:
    try:
        return usd_to_micros(value)
    except DomainError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


# ------------------------------------------------------------------ commands


def cmd_migrate(args: argparse.Namespace) -> int:
    from infrastructure.db.migrate import migrate
    from infrastructure.db.setup import ensure_database
    from infrastructure.settings import load_settings
    from interfaces.bootstrap import bootstrap, open_database

    settings = load_settings(env_file=args.env_file)
    if ensure_database(settings):
        print(f"created database {settings.db.name}")
    db = open_database(settings)
    try:
        applied = migrate(db)
    finally:
        db.close()
    bootstrap(settings, migrate=False).close()  # creates the event store tables
    if args.json:
        print_json({"applied": [f"{m.version:04d}_{m.name}" for m in applied]})
    elif applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
    else:
        print("database is up to date")
    return 0


def cmd_create_user(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.create(args.email, args.password, args.name, actor=_actor())
        if args.admin:
            user = c.users.set_admin(user.email, actor=_actor())
        c.ledger.open_account(user.id)
    finally:
        _settle(c)
    if args.json:
        print_json(asdict(user))
    else:
        print(f"created user {user.email} ({user.id}){' as admin' if user.is_admin else ''}")
    return 0


def cmd_make_admin(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.set_admin(args.email, not args.revoke, actor=_actor())
    finally:
        c.close()
    if args.json:
        print_json(asdict(user))
    else:
        print(f"{user.email} is {'now' if user.is_admin else 'no longer'} an admin")
    return 0


def cmd_users(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        users = c.users.all()
    finally:
        c.close()
    if args.json:
        print_json([asdict(u) for u in users])
        return 0
    table = Table("email", "name", "admin", "id", "created")
    for u in users:
        table.add_row(u.email, u.name, "yes" if u.is_admin else "", u.id, u.created_at[:19])
    print_table(table)
    return 0


def cmd_create_apikey(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        user = c.users.by_email(args.email)
        key, plaintext = c.auth.keys.create(user.id, args.name, actor=_actor())
    finally:
        c.close()
    if args.json:
        print_json({"id": key.id, "name": key.name, "api_key": plaintext})
    else:
        print(f"API key {key.id} ({key.name}) for {user.email}:\n{plaintext}")
        print("Save it now: it is stored hashed and cannot be shown again.", file=sys.stderr)
    return 0


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


def cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from infrastructure.readmodels.rebuild import rebuild
    from projections.ledger import ALL, BY_NAME

    if args.name and args.name not in BY_NAME:
        fail(f"unknown projection {args.name!r}; expected one of {', '.join(BY_NAME)}", 2)
    targets = [BY_NAME[args.name]] if args.name else list(ALL)
    c = _container(args)
    try:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>10} ev/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=Console(stderr=True)) as progress:
            names = ", ".join(p.name for p in targets)
            task = progress.add_task(names, total=max(1, c.events.head()), rate="-")
            started = datetime.now(UTC)

            def report(position: int, head: int, count: int) -> None:
                elapsed = max((datetime.now(UTC) - started).total_seconds(), 1e-6)
                progress.update(
                    task,
                    completed=position,
                    total=max(head, position),
                    rate=f"{count / elapsed:,.0f}",
                )

            results = rebuild(c.db, c.events, targets, progress=report, method=args.method)
            end = max((r.position for r in results), default=0)
            progress.update(task, completed=end, total=max(end, 1))
        seconds = max((datetime.now(UTC) - started).total_seconds(), 1e-6)
        if args.json:
            print_json({"projections": [asdict(r) for r in results], "seconds": seconds})
            return 0
        for result in results:
            console.print(
                f"{result.name}: generation {result.old_generation} -> "
                f"{result.new_generation}, {result.events} events, at position {result.position}"
            )
        events = max((r.events for r in results), default=0)
        console.print(
            f"rebuilt {len(results)} projection(s) from {events:,} events in {seconds:.1f} s "
            f"({events / seconds:,.0f} events/s)"
        )
    finally:
        c.close()
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from infrastructure.readmodels.rebuild import verify
    from projections.ledger import ALL, BY_NAME

    if args.name and args.name not in BY_NAME:
        fail(f"unknown projection {args.name!r}; expected one of {', '.join(BY_NAME)}", 2)
    targets = [BY_NAME[args.name]] if args.name else list(ALL)
    c = _container(args)
    try:
        results = verify(c.db, c.events, targets, method=args.method)
    finally:
        _settle(c)
    ok = all(r.ok for r in results)
    if args.json:
        print_json([{**asdict(r), "ok": r.ok} for r in results])
    else:
        cut = 16 if to_terminal() else None  # whole fingerprints in pipes and files
        for r in results:
            status = "OK" if r.ok else "MISMATCH"
            print(
                f"{r.name:<13} {status:<8} position {r.position:<10} rows {r.rows:<8} "
                f"live {r.live[:cut]} rebuilt {r.rebuilt[:cut]}"
            )
    return 0 if ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    c = _container(args)
    try:
        c.runner.catch_up()
        totals = c.queries.totals()
        stats = {
            "users": c.users.count(),
            "events": c.events.head(),
            "accounts": totals["accounts"],
            "balance_total": usd(totals["balance"]),
            "held_total": usd(totals["held"]),
            "granted_total": usd(totals["granted"]),
            "charged_total": usd(totals["charged"]),
            "transactions": totals["transactions"],
            "projections": {
                name: {"position": pos, "lag": c.events.head() - pos}
                for name, pos in c.runner.positions().items()
            },
        }
    finally:
        _settle(c)
    if args.json:
        print_json(stats)
        return 0
    table = Table("metric", "value", title="GPU Proxy ledger")
    for key, value in stats.items():
        if key != "projections":
            table.add_row(key, money(value) if key.endswith("_total") else str(value))
    for name, p in stats["projections"].items():
        table.add_row(f"projection {name}", f"position {p['position']}, lag {p['lag']}")
    print_table(table)
    return 0


# ---------------------------------------------------------------------- parser


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="aiserve-gpuproxy-admin",
        description="Operator CLI for GPU Proxy: users, credits, audit, replay, projections.",
    )
    parser.add_argument("--env-file", default=".env", help="dotenv file to read (default .env)")
    parser.add_argument("-dm", "--debug-mode", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def add(name: str, handler: Handler, help_text: str, **_ignored: Any) -> OneLineParser:
        """A command; every one takes ``--json`` (a ``json=`` keyword is accepted, unused)."""
        p: OneLineParser = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    _user_commands(add)
    _ledger_commands(add)
    what_if_commands.add_arguments(add("what-if", cmd_what_if, what_if_commands.HELP))
    event_archive_commands.register(add)
    return parser


Add = Callable[..., OneLineParser]


def _user_commands(add: Add) -> None:
    add("migrate", cmd_migrate, "apply database migrations (idempotent)")
    p = add("create-user", cmd_create_user, "create a user")
    p.add_argument("email")
    p.add_argument("password")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true", help="make the user an admin")
    p = add("make-admin", cmd_make_admin, "give (or --revoke) the admin role")
    p.add_argument("email")
    p.add_argument("--revoke", action="store_true")
    add("users", cmd_users, "list users")
    p = add("create-apikey", cmd_create_apikey, "create an API key for a user (shown once)")
    p.add_argument("email")
    p.add_argument("name")


def _statement_command(add: Add) -> None:
    p = add("statement", cmd_statement, "a user's monthly statement from events")
    p.add_argument("email")
    p.add_argument("--month", required=True, type=_month, help="YYYY-MM")
    p.add_argument("--format", choices=("csv", "pdf"), help="a file instead of the table")
    p.add_argument("--output", help="file to write (CSV default: stdout; PDF: statement-M.pdf)")


def _ledger_commands(add: Add) -> None:
    p = add("usage", cmd_usage, "a user's daily usage")
    p.add_argument("email")
    p.add_argument("--since", type=_day, help="YYYY-MM-DD (UTC)")
    p.add_argument("--until", type=_day, help="YYYY-MM-DD (UTC)")
    p = add("sessions", cmd_sessions, "a user's usage sessions, newest first")
    p.add_argument("email")
    sessions_commands.add_paging(p)
    p = add("grant-credits", cmd_grant, "grant credits (USD) to a user")
    p.add_argument("email")
    p.add_argument("amount", type=_positive_usd, help="USD, e.g. 50.00")
    p.add_argument("--reason", default="admin grant")
    p.add_argument("--idempotency-key", help="retrying with the same key grants once")
    p = add("audit", cmd_audit, "a user's ledger events, human-readable")
    p.add_argument("email")
    p.add_argument("--since", type=parse_time)
    p.add_argument("--until", type=parse_time)
    p.add_argument(
        "--limit", type=_page_size, help="at most N events from --since on (a page; all if omitted)"
    )
    p = add("balance", cmd_balance, "balance, holds and window spend (now or --at TIME)")
    p.add_argument("email")
    p.add_argument("--at", type=parse_time, help="ISO 8601 instant to replay the account to")
    p = add("guardrails-spending", cmd_spending, "spend per guard-rail window")
    p.add_argument("email")
    p = add("guardrails-reset", cmd_reset, "reset a user's spending windows (all or one)")
    p.add_argument("email")
    p.add_argument("window", nargs="?", type=_window, help="e.g. 60min; all if omitted")
    p.add_argument("--reason", required=True, help="why (recorded in the ledger)")
    p = add("set-limits", cmd_set_limits, "per-user guard-rail limits: WINDOW=USD|default")
    p.add_argument("email")
    p.add_argument("limits", nargs="+", metavar="WINDOW=USD")
    p.add_argument("--reason", default="")
    p = add("set-cap", cmd_set_cap, "set a user's overage cap (USD)")
    p.add_argument("email")
    p.add_argument("cap", type=_cap)
    p.add_argument("--reason", default="")
    p = add("rebuild-projections", cmd_rebuild, "rebuild read models (all or NAME) and switch")
    p.add_argument("name", nargs="?")
    p.add_argument(
        "--method",
        choices=["auto", "sql", "python"],
        default="auto",
        help="sql: set-based in PostgreSQL; python: the folds; auto: sql where it applies",
    )
    p = add("verify-projections", cmd_verify, "exit 0 only if live read models equal a rebuild")
    p.add_argument("name", nargs="?")
    p.add_argument(
        "--method",
        choices=["auto", "sql", "python"],
        default="python",
        help="how to rebuild for the comparison (default: the Python folds, the reference)",
    )
    add("stats", cmd_stats, "ledger statistics")
    p = add(
        "crypto-transfers",
        cmd_crypto_transfers,
        "token transfers the crypto scanner saw (--unclaimed: credited to no one)",
    )
    p.add_argument("--unclaimed", action="store_true", help="only ambiguous/unmatched ones")
    p.add_argument("--limit", type=_count, default=200, help="newest N (default 200)")
    _statement_command(add)
    p = add("verify-statements", cmd_verify_statements, "recheck statement hash chains")
    p.add_argument("email", nargs="?")
    p.add_argument("--month", type=_month, help="YYYY-MM (default: every recorded month)")


def _count(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise argparse.ArgumentTypeError(f"{value!r} is not a count from 1 to 100000")
    return int(value)


def _month(value: str) -> str:
    try:
        month_bounds(value)
    except DomainError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a month (YYYY-MM)") from None
    return value


def _day(value: str) -> str:
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD)") from None


def _window(value: str) -> str:
    try:
        return normalise_window(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_usd(value: str) -> int:
    micros = _usd(value)
    if micros <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive USD amount (e.g. 50.00)")
    return micros


def _cap(value: str) -> int:
    micros = _usd(value)
    if micros < 0:
        raise argparse.ArgumentTypeError("cap must not be negative")
    return micros


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug_mode else logging.WARNING)
    from infrastructure.settings import ConfigError

    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        fail(f"configuration: {exc}", 2)
    except DomainError as exc:  # refused as bad input (400/422): 2; the operation failed: 1
        fail(exc.message, 2 if exc.status in BAD_INPUT else 1)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except Exception as exc:  # one line, never a traceback (use -dm for details)
        if args.debug_mode:
            raise
        fail(f"{type(exc).__name__}: {exc}", 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
