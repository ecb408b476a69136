"""GET /api/v1/usage/sessions: usage sessions (client, address, time, credits), newest first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from uuid import UUID

from litestar import Router, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter

from domain.errors import InvalidArgumentError
from infrastructure.identity.auth import Principal
from infrastructure.readmodels.queries.usage_sessions import usage_sessions
from interfaces.http.controllers.money import Before, Limit
from interfaces.http.openapi import AUTHED, errors
from interfaces.http.security import provide_principal
from interfaces.presenters.usage import SessionPage, present_page

if TYPE_CHECKING:
    from interfaces.bootstrap import Container


@get(
    "/usage/sessions",
    sync_to_thread=True,
    summary="Usage sessions (yours; an admin may name any user by user_id or email)",
    responses=errors(*AUTHED, 403, 404),
    description=(
        "Usage sessions, newest first: one per client (credential, address and user agent) with "
        "its first and last request, request count and credits charged; a session closes after a "
        "quiet spell. Callers see their own; an admin may name another user by `user_id` or "
        "`email` (not both). Pages with `limit` and `before`. Changes nothing. 403 when a "
        "non-admin names a user; 404 for an unknown user."
    ),
)
def sessions(
    c: NamedDependency[Container],
    principal: NamedDependency[Principal],
    limit: Limit = 50,
    before: Before = None,
    user_id: Annotated[UUID | None, QueryParameter(description="admins: whose")] = None,
    email: Annotated[str | None, QueryParameter(description="admins: whose")] = None,
) -> SessionPage:
    if user_id is not None and email is not None:
        raise InvalidArgumentError("give user_id or email, not both", field="email")
    whose = principal.user_id
    if user_id is not None or email is not None:
        principal.require_admin()
        user = c.users.by_id(str(user_id)) if user_id is not None else c.users.by_email(email or "")
        whose = user.id
    return present_page(usage_sessions(c.db, whose, limit=limit, before=before), limit)


router = Router(
    path="/api/v1",
    tags=["usage"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[sessions],
)
