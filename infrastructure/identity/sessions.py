"""Server-side login sessions: SQL, Redis, or both (``SESSION_MODE``).

Every JWT names its session; a request is accepted only while the session is active, so
logout works at once. ``balanced`` writes both stores and reads Redis first, falling back
to SQL when Redis misses or fails.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from domain.errors import DomainError
from infrastructure.db.sql import Database

log = logging.getLogger(__name__)


class SessionStoreUnavailableError(DomainError):
    status = 503
    title = "Session store unavailable"


@dataclass(frozen=True)
class Session:
    id: str
    user_id: str
    created_at: int
    expires_at: int
    ip_address: str = ""
    user_agent: str = ""


class SessionStore(Protocol):
    def create(self, session: Session) -> None: ...
    def user_of(self, session_id: str) -> str | None: ...
    def revoke(self, session_id: str) -> None: ...


class SqlSessions:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, session: Session) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO sessions (id, user_id, created_at, expires_at, ip_address, "
                "user_agent) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    session.user_id,
                    session.created_at,
                    session.expires_at,
                    session.ip_address[:100],
                    session.user_agent[:300],
                ),
            )

    def user_of(self, session_id: str) -> str | None:
        with self.db.read() as tx:
            row = tx.fetchone(
                "SELECT user_id FROM sessions WHERE id = ? AND revoked_at IS NULL "
                "AND expires_at > ?",
                (session_id, int(time.time())),
            )
        return None if row is None else str(row[0])

    def revoke(self, session_id: str) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE sessions SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (int(time.time()), session_id),
            )


class RedisSessions:
    def __init__(self, client: Any) -> None:
        self.client = client

    @staticmethod
    def _key(session_id: str) -> str:
        return f"gpuproxy:session:{session_id}"

    def create(self, session: Session) -> None:
        ttl = max(1, session.expires_at - int(time.time()))
        self.client.set(self._key(session.id), session.user_id, ex=ttl)

    def user_of(self, session_id: str) -> str | None:
        value = self.client.get(self._key(session_id))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def revoke(self, session_id: str) -> None:
        self.client.delete(self._key(session_id))


class BalancedSessions:
    """Both stores; Redis answers first, SQL is the fallback and the record."""

    def __init__(self, sql: SqlSessions, redis: RedisSessions) -> None:
        self.sql = sql
        self.redis = redis

    def create(self, session: Session) -> None:
        self.sql.create(session)
        try:
            self.redis.create(session)
        except Exception:
            log.warning("redis unavailable; session kept in SQL only", exc_info=True)

    def user_of(self, session_id: str) -> str | None:
        try:
            user = self.redis.user_of(session_id)
        except Exception:
            log.warning("redis unavailable; checking the session in SQL", exc_info=True)
            return self.sql.user_of(session_id)
        if user is not None:
            return user
        return self.sql.user_of(session_id)

    def revoke(self, session_id: str) -> None:
        self.sql.revoke(session_id)
        try:
            self.redis.revoke(session_id)
        except Exception as exc:
            # A stale Redis entry would keep the session alive: refuse to report success.
            raise SessionStoreUnavailableError(
                "Logout recorded but Redis is unreachable; retry"
            ) from exc
