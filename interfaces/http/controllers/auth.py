"""Register, login, logout and API keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from infrastructure.api_keys import ApiKey
from infrastructure.auth import Principal
from infrastructure.identity import User
from interfaces.http.errors import RateLimitedError
from interfaces.http.schemas import ApiKeyBody, LoginBody, RegisterBody
from interfaces.http.security import container_of, provide_principal


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "is_admin": user.is_admin,
        "created_at": user.created_at,
    }


def key_json(key: ApiKey) -> dict[str, Any]:
    def when(epoch: int | None) -> str | None:
        return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()

    return {
        "id": key.id,
        "name": key.name,
        "created_at": when(key.created_at),
        "expires_at": when(key.expires_at),
        "revoked_at": when(key.revoked_at),
    }


def limit_anonymous(request: Request[Any, Any, Any]) -> None:
    """Register and login cost an argon2 hash: limit them per client address too."""
    c = container_of(request)
    decision = c.limiter.hit(f"ip:{request.client.host if request.client else 'unknown'}")
    if not decision.allowed:
        raise RateLimitedError(decision)


@post("/register", status_code=201, sync_to_thread=True, summary="Create an account")
def register(request: Request[Any, Any, Any], data: JSONBody[RegisterBody]) -> dict[str, Any]:
    limit_anonymous(request)
    c = container_of(request)
    user = c.users.create(data.email, data.password, data.name, actor="self-registration")
    c.ledger.open_account(user.id)
    return {"user": user_json(user)}


@post("/login", status_code=200, sync_to_thread=True, summary="Log in: a JWT for a new session")
def login(request: Request[Any, Any, Any], data: JSONBody[LoginBody]) -> dict[str, Any]:
    limit_anonymous(request)
    c = container_of(request)
    client = request.client.host if request.client else ""
    result = c.auth.login(
        data.email, data.password, ip=client, agent=request.headers.get("user-agent", "")
    )
    return {
        "user": user_json(result.user),
        "tokens": {
            "access_token": result.access_token,
            "token_type": "Bearer",
            "expires_at": datetime.fromtimestamp(result.expires_at, UTC).isoformat(),
        },
    }


@post(
    "/logout",
    status_code=200,
    sync_to_thread=True,
    summary="End this session",
    dependencies={"principal": Provide(provide_principal)},
)
def logout(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> dict[str, str]:
    container_of(request).auth.logout(principal)
    return {"message": "Logged out"}


@post(
    "/apikey",
    status_code=201,
    sync_to_thread=True,
    summary="Create an API key (shown once); needs a login session's token",
    description=(
        "Only a JWT from /auth/login may create keys (an API key gets 403). The key expires "
        "with that session at the latest and is revoked at its logout, unless the body "
        "re-enters the user's `password`: then any `expires_at`, or none, is kept."
    ),
    dependencies={"principal": Provide(provide_principal)},
)
def create_api_key(
    request: Request[Any, Any, Any],
    principal: NamedDependency[Principal],
    data: JSONBody[ApiKeyBody],
) -> dict[str, Any]:
    expires = None
    if data.expires_at is not None:
        moment = data.expires_at if data.expires_at.tzinfo else data.expires_at.replace(tzinfo=UTC)
        expires = int(moment.timestamp())
    key, plaintext = container_of(request).auth.create_api_key(
        principal, data.name, expires, password=data.password
    )
    return {
        **key_json(key),
        "api_key": plaintext,
        "message": "Save this API key securely. It will not be shown again.",
    }


@get(
    "/apikeys",
    sync_to_thread=True,
    summary="List your API keys (never the keys themselves)",
    dependencies={"principal": Provide(provide_principal)},
)
def list_api_keys(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> dict[str, Any]:
    keys = container_of(request).auth.keys.list(principal.user_id)
    return {"api_keys": [key_json(k) for k in keys]}


@delete(
    "/apikey/{key_id:str}",
    status_code=200,
    sync_to_thread=True,
    summary="Revoke one of your API keys",
    dependencies={"principal": Provide(provide_principal)},
)
def revoke_api_key(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal], key_id: FromPath[str]
) -> dict[str, str]:
    container_of(request).auth.keys.revoke(principal.user_id, key_id, actor=principal.user_id)
    return {"message": "API key revoked"}


router = Router(
    path="/api/v1/auth",
    tags=["auth"],
    route_handlers=[register, login, logout, create_api_key, list_api_keys, revoke_api_key],
)
