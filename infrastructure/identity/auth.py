"""Authentication: register, login/logout with server-side sessions, API keys, principals."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from domain.errors import DomainError, InvalidArgumentError
from infrastructure.identity.api_keys import ApiKey, ApiKeyStore, key_id_of, looks_like_key
from infrastructure.identity.auth_throttle import AuthThrottle
from infrastructure.identity.sessions import Session, SessionStore
from infrastructure.identity.store import User, UserNotFoundError, UserStore
from infrastructure.identity.tokens import InvalidTokenError, TokenCodec


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
        if looks_like_key(credential):
            return self._by_key(credential, address)
        return self._by_token(credential)

    def is_cheap(self, api_key: str | None, authorization: str | None, address: str = "") -> bool:
        """True when authenticating needs no password hashing: a JWT, an already-seen key, or
        a key refused at once because its id or the address is over the failure limit."""
        credential = (api_key or (authorization or "").partition(" ")[2]).strip()
        return (
            not looks_like_key(credential)
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
        return Principal(
            user.id, user.email, user.is_admin, "jwt", claims.session_id, claims.expires_at
        )
