"""Users: an ordinary table (not an aggregate), argon2id password hashes, audited role changes."""

from __future__ import annotations

import contextlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from domain.errors import DomainError, InvalidArgumentError
from infrastructure.revocation import NoSignal, RevocationSignal
from infrastructure.sql import Database, Tx

EMAIL = re.compile(r"^[^@\s\x00]{1,64}@[^@\s\x00]{1,190}\.[^@\s.\x00]{2,63}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class UserExistsError(DomainError):
    status = 409
    title = "User exists"


class UserNotFoundError(DomainError):
    status = 404
    title = "User not found"


@dataclass(frozen=True)
class User:
    id: str
    email: str
    name: str
    is_admin: bool
    created_at: str


@cache
def _dummy_hash() -> str:
    """A hash with the real parameters, checked when no account matches (equal timing)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def normalise_email(email: str) -> str:
    value = email.strip().lower()
    if not EMAIL.match(value):
        raise InvalidArgumentError(f"{email!r} is not a valid email address", field="email")
    return value


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidArgumentError(
            f"password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters", field="password"
        )


def _row_to_user(row: tuple[object, ...]) -> User:
    return User(str(row[0]), str(row[1]), str(row[2]), bool(row[3]), str(row[4]))


_COLUMNS = "id, email, name, is_admin, created_at"


class UserStore:
    """Create, find and list users; record security-relevant changes."""

    def __init__(self, db: Database, signal: RevocationSignal | None = None) -> None:
        self.db = db
        self.signal = signal or NoSignal()

    def create(self, email: str, password: str, name: str, *, actor: str = "system") -> User:
        email = normalise_email(email)
        _check_password(password)
        name = name.strip()
        if not name or len(name) > 200 or "\x00" in name:
            raise InvalidArgumentError("name must be 1 to 200 characters, no NUL", field="name")
        user = User(str(uuid.uuid4()), email, name, False, datetime.now(UTC).isoformat())
        digest = _hasher.hash(password)
        with self.db.transaction() as tx:
            inserted = tx.execute(  # one statement: concurrent sign-ups cannot both insert
                "INSERT INTO users (id, email, name, password_hash, is_admin, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (email) DO NOTHING",
                (user.id, email, name, digest, False, user.created_at),
            )
            if not inserted:
                raise UserExistsError("A user with this email already exists", email=email)
            self.record(tx, actor, "user.created", user.id)
        return user

    def by_email(self, email: str) -> User:
        email = normalise_email(email)
        with self.db.read() as tx:
            row = tx.fetchone(f"SELECT {_COLUMNS} FROM users WHERE email = ?", (email,))
        if row is None:
            raise UserNotFoundError("No user with this email", email=email)
        return _row_to_user(row)

    def by_id(self, user_id: str) -> User:
        with self.db.read() as tx:
            row = tx.fetchone(f"SELECT {_COLUMNS} FROM users WHERE id = ?", (user_id,))
        if row is None:
            raise UserNotFoundError("No such user", user_id=user_id)
        return _row_to_user(row)

    def all(self) -> list[User]:
        with self.db.read() as tx:
            rows = tx.fetchall(f"SELECT {_COLUMNS} FROM users ORDER BY created_at, email")
        return [_row_to_user(r) for r in rows]

    def count(self) -> int:
        with self.db.read() as tx:
            row = tx.fetchone("SELECT COUNT(*) FROM users")
        return int(row[0]) if row else 0

    def verify_password(self, email: str, password: str) -> User | None:
        """The user if the password matches, else None (and a failed attempt is recorded).

        An unknown email still costs one argon2 check, against a dummy hash, so the answer
        takes as long as for an account that exists (no user enumeration by timing).
        """
        try:
            user = self.by_email(email)
        except (UserNotFoundError, InvalidArgumentError):
            with contextlib.suppress(VerificationError, InvalidHashError):
                _hasher.verify(_dummy_hash(), password)
            return None
        with self.db.read() as tx:
            row = tx.fetchone("SELECT password_hash FROM users WHERE id = ?", (user.id,))
        try:
            _hasher.verify(str(row[0]) if row else "", password)
        except (VerificationError, InvalidHashError):
            with self.db.transaction() as tx:
                self.record(tx, "anonymous", "login.failed", user.id)
            return None
        return user

    def set_admin(self, email: str, is_admin: bool = True, *, actor: str = "system") -> User:
        user = self.by_email(email)
        with self.db.transaction() as tx:
            tx.execute("UPDATE users SET is_admin = ? WHERE id = ?", (is_admin, user.id))
            self.record(
                tx, actor, "role.admin_granted" if is_admin else "role.admin_revoked", user.id
            )
        self.signal.bump()  # cached API-key owners carry the role: re-read them
        return self.by_id(user.id)

    def security_events(self, user_id: str) -> list[tuple[str, str, str, str]]:
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT at, actor, action, detail FROM security_events WHERE subject = ? "
                "ORDER BY at",
                (user_id,),
            )
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    @staticmethod
    def record(tx: Tx, actor: str, action: str, subject: str, detail: str = "") -> None:
        tx.execute(
            "INSERT INTO security_events (id, at, actor, action, subject, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (str(uuid.uuid4()), datetime.now(UTC).isoformat(), actor, action, subject, detail),
        )
