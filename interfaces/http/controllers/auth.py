"""Register, login, logout and API keys."""

from __future__ import annotations

from datetime import UTC
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from infrastructure.identity.api_keys import ApiKey
from infrastructure.identity.auth import Principal
from infrastructure.identity.store import User
from interfaces.http.errors import RateLimitedError
from interfaces.http.openapi import AUTHED, PUBLIC, errors
from interfaces.http.schemas import ApiKeyBody, LoginBody, RegisterBody
from interfaces.http.security import provide_principal
from interfaces.presenters.auth import (
    ApiKeyList,
    LoggedIn,
    Message,
    NewApiKey,
    Registered,
    present_key,
    present_login,
    present_new_key,
    present_user,
)

if TYPE_CHECKING:
    from interfaces.bootstrap import Container


def user_json(user: User) -> dict[str, Any]:
    """The user as plain data (doors that answer dicts); REST returns ``present_user``."""
    data: dict[str, Any] = msgspec.to_builtins(present_user(user))
    return data


def key_json(key: ApiKey) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(present_key(key))
    return data


def limit_anonymous(request: Request[Any, Any, Any], c: Container) -> None:
    """Register and login cost an argon2 hash: limit them per client address too."""
    decision = c.limiter.hit(f"ip:{request.client.host if request.client else 'unknown'}")
    if not decision.allowed:
        raise RateLimitedError(decision)


@post(
    "/register",
    status_code=201,
    sync_to_thread=True,
    summary="Create an account",
    operation_class=PUBLIC,
    responses=errors(400, 409, 429),
    description=(
        "Creates an account from `email`, `password` (8 characters or more) and `name`, with an "
        "empty credit account, and answers the new user; log in next to get a token. Anyone may "
        "call it, without a credential; it is rate limited per client address, as each call hashes "
        "a password (429). 400 names an invalid field; 409 when the email, or a look-alike "
        "spelling of it, is already registered."
    ),
)
def register(
    request: Request[Any, Any, Any], c: NamedDependency[Container], data: JSONBody[RegisterBody]
) -> Registered:
    limit_anonymous(request, c)
    user = c.users.create(data.email, data.password, data.name, actor="self-registration")
    c.ledger.open_account(user.id)
    return Registered(user=present_user(user))


@post(
    "/login",
    status_code=200,
    sync_to_thread=True,
    summary="Log in: a JWT for a new session",
    operation_class=PUBLIC,
    responses=errors(400, 401, 429),
    description=(
        "Checks `email` and `password` and opens a login session: answers a JWT for "
        "`Authorization: Bearer` and when it expires. The session (client address, user agent) is "
        "recorded and ends at logout or expiry. Anyone may call it, without a credential; rate "
        "limited per client address (429). 401 for a wrong email or password, the same answer for "
        "both."
    ),
)
def login(
    request: Request[Any, Any, Any], c: NamedDependency[Container], data: JSONBody[LoginBody]
) -> LoggedIn:
    limit_anonymous(request, c)
    client = request.client.host if request.client else ""
    result = c.auth.login(
        data.email, data.password, ip=client, agent=request.headers.get("user-agent", "")
    )
    return present_login(result.user, result.access_token, result.expires_at)


@post(
    "/logout",
    status_code=200,
    sync_to_thread=True,
    summary="End this session",
    dependencies={"principal": Provide(provide_principal)},
    responses=errors(*AUTHED),
    description=(
        "Ends the calling login session at once, on every replica: its token stops working, and so "
        "do the API keys it created without re-entering the password. Needs the session's Bearer "
        "token: an API key is not a session (400: revoke the key instead)."
    ),
)
def logout(c: NamedDependency[Container], principal: NamedDependency[Principal]) -> Message:
    c.auth.logout(principal)
    return Message(message="Logged out")


@post(
    "/apikey",
    status_code=201,
    sync_to_thread=True,
    summary="Create an API key (shown once); needs a login session's token",
    dependencies={"principal": Provide(provide_principal)},
    responses=errors(*AUTHED, 403),
    description=(
        "Creates an API key named `name` for the caller and answers its secret, once (it is stored "
        "hashed). Only a JWT from /auth/login may create keys (an API key gets 403). The key "
        "expires with that session at the latest and is revoked at its logout, unless the body "
        "re-enters the user's `password`: then any `expires_at`, or none, is kept. 400 names an "
        "invalid field."
    ),
)
def create_api_key(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    data: JSONBody[ApiKeyBody],
) -> NewApiKey:
    expires = None
    if data.expires_at is not None:
        moment = data.expires_at if data.expires_at.tzinfo else data.expires_at.replace(tzinfo=UTC)
        expires = int(moment.timestamp())
    key, plaintext = c.auth.create_api_key(principal, data.name, expires, password=data.password)
    return present_new_key(key, plaintext)


@get(
    "/apikeys",
    sync_to_thread=True,
    summary="List your API keys (never the keys themselves)",
    dependencies={"principal": Provide(provide_principal)},
    responses=errors(401, 429),
    description=(
        "The caller's API keys, revoked and expired ones included: id, name, creation, expiry and "
        "revocation, never the secret. Own keys only; changes nothing."
    ),
)
def list_api_keys(
    c: NamedDependency[Container], principal: NamedDependency[Principal]
) -> ApiKeyList:
    keys = c.auth.keys.list(principal.user_id)
    return ApiKeyList(api_keys=[present_key(k) for k in keys])


@delete(
    "/apikey/{key_id:str}",
    status_code=200,
    sync_to_thread=True,
    summary="Revoke one of your API keys",
    dependencies={"principal": Provide(provide_principal)},
    responses=errors(*AUTHED, 404),
    description=(
        "Revokes one of the caller's API keys by id: it stops authenticating at once, on every "
        "replica, and the revocation is kept in the security audit trail. 404 when the key is not "
        "the caller's or is already revoked."
    ),
)
def revoke_api_key(
    c: NamedDependency[Container], principal: NamedDependency[Principal], key_id: FromPath[str]
) -> Message:
    c.auth.keys.revoke(principal.user_id, key_id, actor=principal.user_id)
    return Message(message="API key revoked")


router = Router(
    path="/api/v1/auth",
    tags=["auth"],
    route_handlers=[register, login, logout, create_api_key, list_api_keys, revoke_api_key],
)
