"""Shared pieces of the admin CLI: the container it opens, argument types, the console."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable
from datetime import date
from typing import Any

from rich.console import Console

from domain.errors import DomainError
from domain.guardrails import normalise_window
from domain.money import usd_to_micros
from domain.statements import month_bounds
from interfaces.cli.common import fail

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
