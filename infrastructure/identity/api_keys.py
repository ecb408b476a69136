"""API keys: shown once, stored as argon2id hashes, found by a lookup id in one row.

A key looks like ``gpx_<id>_<secret>``. Verifying runs argon2 once per key per process; after
that a SHA-256 of the key is compared in memory. The verified owner is reused without reading
the row again only while the revocation signal is unchanged
(``infrastructure.identity.revocation``), so a revocation by any process takes effect at the
next request. A check that needs argon2 goes through the caller's gate
(``infrastructure.identity.auth_throttle``: failure limits, bounded argon2 slots).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from domain.errors import DomainError, InvalidArgumentError
from infrastructure.db.sql import Database
from infrastructure.identity.revocation import RevocationSignal
from infrastructure.identity.store import UserStore

PREFIX = "gpx_"
KEY_ID = re.compile(r"[0-9a-f]{16}")
KEY_PATTERN = re.compile(r"^gpx_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_hasher = PasswordHasher()
MAX_KEY_LIFETIME = 10 * 366 * 86_400  # seconds


class ApiKeyNotFoundError(DomainError):
    status = 404
    title = "API key not found"


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_id: str
    name: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None


@dataclass(frozen=True)
class KeyOwner:
    """Who a verified key belongs to."""

    key_id: str
    user_id: str
    email: str
    is_admin: bool


@dataclass(frozen=True)
class _Verified:
    digest: bytes
    owner: KeyOwner
    expires_at: int | None
    signal: object


class HashGate(Protocol):
    """What a check that needs argon2 must pass: a refusal check, then a hashing slot."""

    def check(self) -> None: ...
    def hashing(self) -> AbstractContextManager[None]: ...


def looks_like_key(value: str) -> bool:
    return value.startswith(PREFIX)


def key_id_of(presented: str) -> str | None:
    """The lookup id of a well-formed key, else None."""
    match = KEY_PATTERN.match(presented)
    return None if match is None else match.group(1)


class ApiKeyStore:
    def __init__(self, db: Database, users: UserStore, signal: RevocationSignal) -> None:
        self.db = db
        self.users = users
        self.signal = signal
        self._verified: dict[str, _Verified] = {}
        self._lock = threading.Lock()

    def create(
        self,
        user_id: str,
        name: str,
        *,
        expires_at: int | None = None,
        actor: str = "",
        session_id: str | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the plaintext (shown once, never stored).

        ``session_id``: the login session it is bound to (revoked with it), if any.
        """
        name = name.strip()
        if not name or len(name) > 100 or "\x00" in name:
            raise InvalidArgumentError("name must be 1 to 100 characters, no NUL", field="name")
        now = int(time.time())
        if expires_at is not None and expires_at <= now:
            raise InvalidArgumentError("expires_at must be in the future", field="expires_at")
        if expires_at is not None and expires_at > now + MAX_KEY_LIFETIME:
            raise InvalidArgumentError("expires_at must be within 10 years", field="expires_at")
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        plaintext = f"{PREFIX}{key_id}_{secret}"
        record = ApiKey(key_id, user_id, name, now, expires_at, None)
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO api_keys (id, user_id, name, secret_hash, created_at, expires_at, "
                "session_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, user_id, name, _hasher.hash(secret), now, expires_at, session_id),
            )
            UserStore.record(tx, actor or user_id, "apikey.created", user_id, key_id)
        return record, plaintext

    def list(self, user_id: str) -> list[ApiKey]:
        with self.db.read() as tx:
            rows = tx.fetchall(
                "SELECT id, user_id, name, created_at, expires_at, revoked_at FROM api_keys "
                "WHERE user_id = ? ORDER BY created_at, id",
                (user_id,),
            )
        return [
            ApiKey(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                int(r[3]),
                None if r[4] is None else int(r[4]),
                None if r[5] is None else int(r[5]),
            )
            for r in rows
        ]

    def revoke(self, user_id: str, key_id: str, *, actor: str = "") -> None:
        """Revoke one of the user's keys (404 if it is not theirs or already revoked)."""
        if not KEY_ID.fullmatch(key_id):
            raise ApiKeyNotFoundError("No such active API key", key_id=key_id[:32])
        with self.db.transaction() as tx:
            changed = tx.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND user_id = ? "
                "AND revoked_at IS NULL",
                (int(time.time()), key_id, user_id),
            )
            if not changed:
                raise ApiKeyNotFoundError("No such active API key", key_id=key_id)
            UserStore.record(tx, actor or user_id, "apikey.revoked", user_id, key_id)
        with self._lock:
            self._verified.pop(key_id, None)
        self.signal.bump()  # after the commit: every process re-reads the row from now on

    def revoke_session_keys(self, session_id: str, *, actor: str = "") -> tuple[str, ...]:
        """Revoke every active key bound to a login session (at its logout); their ids."""
        now = int(time.time())
        with self.db.transaction() as tx:
            rows = tx.fetchall(
                "SELECT id, user_id FROM api_keys WHERE session_id = ? AND revoked_at IS NULL",
                (session_id,),
            )
            for key_id, user_id in rows:
                tx.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, key_id))
                UserStore.record(
                    tx, actor or str(user_id), "apikey.revoked", str(user_id), str(key_id)
                )
        if rows:
            with self._lock:
                for key_id, _ in rows:
                    self._verified.pop(str(key_id), None)
            self.signal.bump()
        return tuple(str(r[0]) for r in rows)

    def is_cached(self, presented: str) -> bool:
        """True if this exact key was verified before (checking it again needs no argon2)."""
        match = KEY_PATTERN.match(presented)
        if match is None:
            return True  # malformed: refused without any hashing
        known = self._verified.get(match.group(1))
        return known is not None and hmac.compare_digest(
            known.digest, hashlib.sha256(presented.encode()).digest()
        )

    def verify(self, presented: str, gate: HashGate | None = None) -> KeyOwner | None:
        """The owner of a valid, unrevoked, unexpired key; None otherwise.

        A key not verified before in this process passes ``gate.check()`` before its row is
        read, and runs argon2 inside ``gate.hashing()``.
        """
        match = KEY_PATTERN.match(presented)
        if match is None:
            return None
        key_id, secret = match.groups()
        digest = hashlib.sha256(presented.encode()).digest()
        signal = self.signal.read()  # read before the row: a later bump invalidates this
        cached = self._verified.get(key_id)
        if (
            cached is not None
            and cached.signal == signal
            and hmac.compare_digest(cached.digest, digest)
            and (cached.expires_at is None or cached.expires_at > time.time())
        ):
            return cached.owner
        needs_hash = cached is None or not hmac.compare_digest(cached.digest, digest)
        if needs_hash and gate is not None:
            gate.check()
        with self.db.read() as tx:
            row = tx.fetchone(
                "SELECT k.secret_hash, k.expires_at, k.revoked_at, u.id, u.email, u.is_admin "
                "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?",
                (key_id,),
            )
        if row is None or row[2] is not None:
            return None
        expires_at = None if row[1] is None else int(row[1])
        if expires_at is not None and expires_at <= time.time():
            return None
        if needs_hash:
            with gate.hashing() if gate is not None else nullcontext():
                try:
                    _hasher.verify(str(row[0]), secret)
                except (VerificationError, InvalidHashError):
                    return None
        owner = KeyOwner(key_id, str(row[3]), str(row[4]), bool(row[5]))
        with self._lock:
            self._verified[key_id] = _Verified(digest, owner, expires_at, signal)
        return owner
