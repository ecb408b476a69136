"""Accounts, sessions and API keys (``/api/v1/auth/…``, the admin user views)."""

from __future__ import annotations

from datetime import UTC, datetime

from msgspec import Struct

from infrastructure.identity.api_keys import ApiKey as ApiKeyRecord
from infrastructure.identity.store import User as UserRecord


class User(Struct):
    id: str
    email: str
    name: str
    is_admin: bool
    created_at: str  # ISO 8601


class Registered(Struct):
    user: User


class Tokens(Struct):
    access_token: str
    token_type: str
    expires_at: str


class LoggedIn(Struct):
    user: User
    tokens: Tokens


class Message(Struct):
    """A plain confirmation."""

    message: str


class ApiKey(Struct):
    """An API key's record (never the key itself)."""

    id: str
    name: str
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None


class NewApiKey(ApiKey, kw_only=True):
    """A new key: ``api_key`` is shown this once."""

    api_key: str
    message: str


class ApiKeyList(Struct):
    api_keys: list[ApiKey]


def _when(epoch: int | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


def present_user(user: UserRecord) -> User:
    return User(
        id=user.id,
        email=user.email,
        name=user.name,
        is_admin=user.is_admin,
        created_at=user.created_at,
    )


def present_key(key: ApiKeyRecord) -> ApiKey:
    return ApiKey(
        id=key.id,
        name=key.name,
        created_at=_when(key.created_at),
        expires_at=_when(key.expires_at),
        revoked_at=_when(key.revoked_at),
    )


def present_new_key(key: ApiKeyRecord, plaintext: str) -> NewApiKey:
    shown = present_key(key)
    return NewApiKey(
        id=shown.id,
        name=shown.name,
        created_at=shown.created_at,
        expires_at=shown.expires_at,
        revoked_at=shown.revoked_at,
        api_key=plaintext,
        message="Save this API key securely. It will not be shown again.",
    )


def present_login(user: UserRecord, access_token: str, expires_at: int) -> LoggedIn:
    return LoggedIn(
        user=present_user(user),
        tokens=Tokens(
            access_token=access_token,
            token_type="Bearer",  # noqa: S106 - the scheme, not a secret
            expires_at=datetime.fromtimestamp(expires_at, UTC).isoformat(),
        ),
    )
