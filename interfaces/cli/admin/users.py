"""Admin CLI commands for users and credentials: migrate, create-user, make-admin, users,
create-apikey."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from rich.table import Table

from interfaces.cli.admin.base import _actor, _container, _settle
from interfaces.cli.common import print_json
from interfaces.cli.output import print_table


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
