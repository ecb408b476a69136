"""Read-side queries over users and their balances (the admin's user search)."""

from __future__ import annotations

from dataclasses import dataclass

from infrastructure.db.sql import Database


@dataclass(frozen=True)
class UserMatch:
    id: str
    email: str
    name: str
    is_admin: bool
    created_at: str
    balance: int
    held: int


def like_prefix(text: str) -> str:
    """``text`` lowercased as a LIKE prefix pattern, its wildcards escaped with ``\\``."""
    escaped = text.strip().lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class UserQueries:
    """Users found by the start of their email or name."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def search(self, text: str, limit: int) -> list[UserMatch]:
        """Users whose email or name starts with ``text`` (any case), by email."""
        pattern = like_prefix(text)
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT u.id, u.email, u.name, u.is_admin, u.created_at, b.balance, b.held "
                "FROM users u LEFT JOIN balances b ON b.user_id = u.id "
                "WHERE lower(u.email) LIKE ? ESCAPE '\\' OR lower(u.name) LIKE ? ESCAPE '\\' "
                "ORDER BY u.email LIMIT ?",
                (pattern, pattern, limit),
            )
        return [
            UserMatch(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                bool(r[3]),
                str(r[4]),
                int(r[5] or 0),
                int(r[6] or 0),
            )
            for r in rows
        ]
