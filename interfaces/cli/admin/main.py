"""The admin CLI's parser (every command and its arguments in one place) and entry point."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from domain.errors import DomainError
from interfaces.cli import event_archive_commands, sessions_commands, what_if_commands
from interfaces.cli.admin.base import (
    BAD_INPUT,
    Handler,
    _cap,
    _count,
    _day,
    _month,
    _page_size,
    _positive_usd,
    _window,
)
from interfaces.cli.admin.ledger import (
    cmd_balance,
    cmd_crypto_transfers,
    cmd_grant,
    cmd_reset,
    cmd_set_cap,
    cmd_set_limits,
    cmd_spending,
)
from interfaces.cli.admin.projections import cmd_rebuild, cmd_stats, cmd_verify
from interfaces.cli.admin.statements import cmd_audit, cmd_statement, cmd_verify_statements
from interfaces.cli.admin.usage import cmd_sessions, cmd_usage, cmd_what_if
from interfaces.cli.admin.users import (
    cmd_create_apikey,
    cmd_create_user,
    cmd_make_admin,
    cmd_migrate,
    cmd_users,
)
from interfaces.cli.common import OneLineParser, fail, parse_time


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
