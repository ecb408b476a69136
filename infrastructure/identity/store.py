"""Users: an ordinary table (not an aggregate), argon2id password hashes, audited role changes."""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from domain.errors import DomainError, InvalidArgumentError
from infrastructure.db.sql import Database, Tx
from infrastructure.identity.emails import (
    EMAIL,
    legacy_form,
    normalise_email,
    refuse_mixed_script,
    skeleton,
)
from infrastructure.identity.revocation import NoSignal, RevocationSignal

log = logging.getLogger(__name__)
_FILL_BATCH = 1000  # accounts per transaction when filling in skeletons
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


class UserExistsError(DomainError):
    status = 409
    title = "User exists"


def _skeleton_of(stored: str) -> str:
    """The skeleton of an address as stored (older rows may predate ``normalise_email``)."""
    try:
        return skeleton(normalise_email(stored))
    except InvalidArgumentError:
        return skeleton(stored)


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
        self._skeletons_filled = False
        self._fill_lock = threading.Lock()

    def create(self, email: str, password: str, name: str, *, actor: str = "system") -> User:
        """A new account: 400 naming ``email`` if it mixes scripts, 409 if it is, or looks
        like (same UTS #39 skeleton), an existing account's address."""
        email = normalise_email(email)
        refuse_mixed_script(email)
        _check_password(password)
        name = name.strip()
        if not name or len(name) > 200 or "\x00" in name:
            raise InvalidArgumentError("name must be 1 to 200 characters, no NUL", field="name")
        user = User(str(uuid.uuid4()), email, name, False, datetime.now(UTC).isoformat())
        digest = _hasher.hash(password)
        self._fill_skeletons()
        with self.db.transaction() as tx:
            inserted = tx.execute(  # one statement: concurrent sign-ups cannot both insert
                "INSERT INTO users (id, email, name, password_hash, is_admin, created_at, "
                "email_skeleton) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (user.id, email, name, digest, False, user.created_at, skeleton(email)),
            )
            if not inserted:
                if tx.fetchone("SELECT 1 FROM users WHERE email = ?", (email,)):
                    raise UserExistsError("A user with this email already exists", email=email)
                raise UserExistsError(
                    "An account whose email looks the same already exists", field="email"
                )
            self.record(tx, actor, "user.created", user.id)
        return user

    def _fill_skeletons(self) -> None:
        """Give accounts made before migration 0011 their skeleton (once per process; the
        oldest of look-alikes gets it, the others keep NULL and keep working)."""
        with self._fill_lock:
            if self._skeletons_filled:
                return
            with self.db.read() as tx:
                rows = tx.fetchall(
                    "SELECT id, email FROM users WHERE email_skeleton IS NULL ORDER BY created_at"
                )
            marks: dict[str, str] = {}  # skeleton -> the oldest account without one
            for user_id, stored in rows:
                marks.setdefault(_skeleton_of(str(stored)), str(user_id))
            pending = list(marks.items())
            for start in range(0, len(pending), _FILL_BATCH):
                self._fill_batch(pending[start : start + _FILL_BATCH])
            self._skeletons_filled = True

    def _fill_batch(self, batch: list[tuple[str, str]]) -> None:
        """One transaction for the batch; row by row if a concurrent filler collides."""
        sql = (
            "UPDATE users SET email_skeleton = ? WHERE id = ? AND email_skeleton IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM users WHERE email_skeleton = ?)"
        )
        try:
            with self.db.transaction() as tx:
                for mark, user_id in batch:
                    tx.execute(sql, (mark, user_id, mark))
            return
        except Exception:  # another process filled a look-alike at the same time
            log.info("email skeletons: a concurrent filler collided; filling row by row")
        for mark, user_id in batch:
            try:
                with self.db.transaction() as tx:
                    tx.execute(sql, (mark, user_id, mark))
            except Exception:  # the look-alike that got it keeps it
                log.info("email skeleton of user %s left empty (a look-alike has it)", user_id)

    def by_email(self, email: str) -> User:
        """The account with this address, normalised as at sign-up (or as stored before)."""
        legacy = legacy_form(email)
        try:
            email = normalise_email(email)
        except InvalidArgumentError:
            if not EMAIL.match(legacy):  # not even valid by the rule accounts were made under
                raise
            email = legacy
        with self.db.read() as tx:
            row = tx.fetchone(f"SELECT {_COLUMNS} FROM users WHERE email = ?", (email,))
            if row is None and legacy != email:
                row = tx.fetchone(f"SELECT {_COLUMNS} FROM users WHERE email = ?", (legacy,))
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
