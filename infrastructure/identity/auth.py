"""Authentication: register, login/logout with server-side sessions, API keys, principals.

A verified JWT is remembered (by the SHA-256 of the token) with the principal it names, as a
verified API key is (``api_keys``): the next request with the same token decodes nothing and
reads no session or user row while the revocation signal (``revocation``) still reads what it
read before that verification, and the token has not expired. Logout and role changes bump
the signal after their commit, so every process re-checks its tokens at the next request.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass

from domain.errors import DomainError, InvalidArgumentError
from domain.usage import Caller
from infrastructure.identity.api_keys import PREFIX, ApiKey, ApiKeyStore, key_id_of
from infrastructure.identity.auth_throttle import AuthThrottle
from infrastructure.identity.sessions import Session, SessionStore
from infrastructure.identity.store import User, UserNotFoundError, UserStore
from infrastructure.identity.tokens import InvalidTokenError, TokenCodec

CREDENTIAL_KINDS = {"apikey": "apikey", "jwt": "session"}  # Principal.method -> the kind shown


class AuthenticationError(DomainError):
    status = 401
    title = "Unauthorized"


class ForbiddenError(DomainError):
    status = 403
    title = "Forbidden"


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    user_id: str
    email: str
    is_admin: bool
    method: str  # "jwt" or "apikey"
    credential_id: str  # session id or API key id
    expires_at: int | None = None  # a JWT's (and so its login session's) expiry

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ForbiddenError("Admin role required")

    def caller(self, address: str, user_agent: str = "") -> Caller:
        """Who made one request, for its usage session: the credential's kind and id (never
        its secret), the client's address and agent. Every door names callers this way."""
        kind = CREDENTIAL_KINDS.get(self.method, self.method)
        return Caller(f"{kind}:{self.credential_id}", address, user_agent)


@dataclass(frozen=True)
class _SeenToken:
    """A verified JWT's principal, trusted while the revocation signal reads ``signal``."""

    principal: Principal
    expires_at: int
    signal: object


MAX_SEEN_TOKENS = 10_000  # remembered tokens per process; past that, the expired are dropped


@dataclass(frozen=True)
class LoginResult:
    user: User
    access_token: str
    expires_at: int
    session_id: str


class AuthService:
    def __init__(
        self,
        users: UserStore,
        keys: ApiKeyStore,
        sessions: SessionStore,
        tokens: TokenCodec,
        throttle: AuthThrottle,
    ) -> None:
        self.users = users
        self.keys = keys
        self.sessions = sessions
        self.tokens = tokens
        self.throttle = throttle
        self._tokens: dict[bytes, _SeenToken] = {}
        self._lock = threading.Lock()

    def login(self, email: str, password: str, *, ip: str = "", agent: str = "") -> LoginResult:
        user = self.users.verify_password(email, password)
        if user is None:
            raise AuthenticationError("invalid credentials")
        now = int(time.time())
        session_id = secrets.token_urlsafe(24)
        token, expires = self.tokens.issue(user.id, session_id, now)
        self.sessions.create(Session(session_id, user.id, now, expires, ip, agent))
        return LoginResult(user, token, expires, session_id)

    def logout(self, principal: Principal) -> None:
        """End the session at once, and the API keys it made without the password."""
        if principal.method != "jwt":
            raise InvalidArgumentError(
                "API keys are not sessions: revoke the key with DELETE /api/v1/auth/apikey/{id}"
            )
        self.sessions.revoke(principal.credential_id)
        self.users.signal.bump()  # after the commit: every process re-checks its tokens
        self.keys.revoke_session_keys(principal.credential_id, actor=principal.user_id)

    def create_api_key(
        self,
        principal: Principal,
        name: str,
        expires_at: int | None = None,
        *,
        password: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for the caller, who must hold a login session (an API key cannot mint
        keys). The key never outlives that session (expiry capped, revoked at logout) unless
        ``password`` re-confirms the user: then any expiry, or none, is allowed."""
        if principal.method != "jwt":
            raise ForbiddenError(
                "API keys cannot create API keys: log in (POST /api/v1/auth/login) and use "
                "the session's token"
            )
        session_id: str | None = principal.credential_id
        if password is not None:
            if self.users.verify_password(principal.email, password) is None:
                raise ForbiddenError("password is incorrect", field="password")
            session_id = None
        elif principal.expires_at is not None and (
            expires_at is None or expires_at > principal.expires_at
        ):
            expires_at = principal.expires_at
        return self.keys.create(
            principal.user_id,
            name,
            expires_at=expires_at,
            actor=principal.user_id,
            session_id=session_id,
        )

    def authenticate(
        self, api_key: str | None, authorization: str | None, address: str = ""
    ) -> Principal:
        """Resolve the caller from ``X-API-Key`` or ``Authorization: Bearer`` (JWT or key).

        ``address`` is the client's: failed API-key attempts are limited per key id and per
        address (``AuthThrottle``; 429 once over either).
        """
        if api_key:
            return self._by_key(api_key.strip(), address)
        if not authorization:
            raise AuthenticationError("Missing authorization")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationError("Invalid authorization format")
        if credential.startswith(PREFIX):
            return self._by_key(credential, address)
        return self._by_token(credential)

    def is_cheap(self, api_key: str | None, authorization: str | None, address: str = "") -> bool:
        """True when authenticating needs no password hashing: a JWT, an already-seen key, or
        a key refused at once because its id or the address is over the failure limit."""
        credential = (api_key or (authorization or "").partition(" ")[2]).strip()
        return (
            not credential.startswith(PREFIX)
            or self.keys.is_cached(credential)
            or self.throttle.locked_locally(key_id_of(credential), address)
        )

    def _by_key(self, presented: str, address: str) -> Principal:
        key_id = key_id_of(presented)
        owner = self.keys.verify(presented, self.throttle.gate(key_id, address))
        if owner is None:
            self.throttle.failed(key_id, address)
            raise AuthenticationError("Invalid API key")
        return Principal(owner.user_id, owner.email, owner.is_admin, "apikey", owner.key_id)

    def _by_token(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).digest()
        signal = self.users.signal.read()  # read before the rows: a later bump invalidates
        seen = self._tokens.get(digest)
        if seen is not None and seen.signal == signal and time.time() < seen.expires_at:
            return seen.principal
        principal, expires_at = self._verify_token(token)
        self._remember(digest, _SeenToken(principal, expires_at, signal))
        return principal

    def _remember(self, digest: bytes, seen: _SeenToken) -> None:
        with self._lock:
            if len(self._tokens) >= MAX_SEEN_TOKENS:
                now = time.time()
                self._tokens = {d: s for d, s in self._tokens.items() if now < s.expires_at}
                if len(self._tokens) >= MAX_SEEN_TOKENS:
                    self._tokens.clear()
            self._tokens[digest] = seen

    def _verify_token(self, token: str) -> tuple[Principal, int]:
        """Signature and claims, then the session (active) and the user (role, email)."""
        try:
            claims = self.tokens.decode(token)
        except InvalidTokenError:
            raise AuthenticationError("Invalid token") from None
        if self.sessions.user_of(claims.session_id) != claims.user_id:
            raise AuthenticationError("Session ended; log in again")
        try:
            user = self.users.by_id(claims.user_id)
        except UserNotFoundError:
            raise AuthenticationError("Invalid token") from None
        principal = Principal(
            user.id, user.email, user.is_admin, "jwt", claims.session_id, claims.expires_at
        )
        return principal, claims.expires_at
