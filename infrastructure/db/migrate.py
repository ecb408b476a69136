"""Applies ``migrations/NNNN_name.sql`` in order, once each, recorded in ``schema_migrations``.

The files are package data of the ``migrations`` package, read through ``importlib.resources``
so an installed wheel finds them wherever it runs (docs/adr/0020-installable-package.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from infrastructure.db.sql import Database, Tx

MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
ADVISORY_LOCK_KEY = 7_420_001  # serialises concurrent migrators on PostgreSQL


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Traversable

    def statements(self) -> list[str]:
        text = "\n".join(
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if not line.strip().startswith("--")
        )
        return [s.strip() for s in text.split(";") if s.strip()]


def migrations_dir() -> Traversable:
    """``MIGRATIONS_DIR`` when set, else the installed ``migrations`` package."""
    override = os.environ.get("MIGRATIONS_DIR")
    return Path(override) if override else files("migrations")


def discover(folder: Traversable | None = None) -> list[Migration]:
    found = []
    for path in sorted((folder or migrations_dir()).iterdir(), key=lambda p: p.name):
        match = MIGRATION_FILE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError("two migrations share a version number")
    return found


def _ensure_table(tx: Tx) -> None:
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
    )


def applied_versions(db: Database) -> set[int]:
    with db.transaction() as tx:
        _ensure_table(tx)
        return {row[0] for row in tx.fetchall("SELECT version FROM schema_migrations")}


def migrate(db: Database, folder: Traversable | None = None) -> list[Migration]:
    """Apply pending migrations, each in its own transaction; return those applied."""
    applied: list[Migration] = []
    for migration in discover(folder):
        with db.transaction() as tx:
            if tx.dialect == "postgres":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (ADVISORY_LOCK_KEY,))
            _ensure_table(tx)
            if tx.fetchone(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            ):
                continue
            for statement in migration.statements():
                tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, datetime.now(UTC).isoformat()),
            )
        applied.append(migration)
    return applied


def pending(db: Database, folder: Traversable | None = None) -> list[Migration]:
    done = applied_versions(db)
    return [m for m in discover(folder) if m.version not in done]
