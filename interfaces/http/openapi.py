"""The OpenAPI contract's shared parts: the one problem schema, per-route error statuses,
public operations (``security: []``), raw request bodies and operation ids (ADR 0025).

Litestar documents only what a handler's signature shows. What it cannot see is declared
here and used by the route decorators:

- ``errors(401, 404, …)``: the statuses a route answers with an RFC 9457 problem
  (``application/problem+json``, ``Problem``); it replaces Litestar's default 400 body
  (``{status_code, detail, extra}``), which this server never sends.
- ``operation(public=True, body=…)``: an ``Operation`` class for ``operation_class=``; a public
  operation carries ``security: []`` (the document's default asks for a key or a token), and
  ``body`` documents a request body the handler reads itself (uploads, OIP inference, webhooks).
- ``operation_id``: ``getHealth``, ``listApiKeys``, ``inferModel``: the handler's name in
  camelCase, with the HTTP verb in front when the name is not one already.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from litestar.enums import MediaType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
    SecurityRequirement,
    Tag,
)
from litestar.types import Method
from msgspec import Struct

from interfaces.http.errors import PROBLEM

if TYPE_CHECKING:
    from litestar.handlers import HTTPRouteHandler
    from litestar.types.internal_types import PathParameterDefinition

AUTH_SCHEMES: list[SecurityRequirement] = [{"ApiKey": []}, {"Bearer": []}]
VERBS = frozenset(
    {
        *("get", "list", "create", "delete", "set", "revoke", "register", "login", "logout"),
        *("rent", "reserve", "release", "destroy", "infer", "predict", "upload", "check"),
        *("grant", "reset", "refund", "search", "run", "send", "proxy"),
    }
)
DESCRIPTIONS = {
    400: "Bad request: the problem's `errors` name each invalid field; nothing changed",
    401: "No valid API key or Bearer token",
    402: "Payment required: not enough credits, or a spending limit would be exceeded",
    403: "Forbidden: admin only, or a login session's token is needed (not an API key)",
    404: "Not found (or not yours)",
    409: "Conflict with the current state",
    413: "Request body too large",
    429: "Too many requests: see Retry-After",
    502: "The upstream instance or provider failed",
    503: "A dependency (database, provider, payment processor) is unavailable",
    504: "The upstream instance did not answer in time",
}
AUTHED = (400, 401, 429)  # every route behind provide_principal
ADMIN = (*AUTHED, 403)  # behind provide_admin


class FieldError(Struct):
    """One invalid field of a 400: its name and what is wrong with it."""

    field: str
    message: str


class Problem(Struct, omit_defaults=True):
    """An RFC 9457 problem (``application/problem+json``); ``error`` repeats ``detail`` for
    older clients. Some problems add members: ``errors`` (400), ``violations`` and ``spent``
    (402 spending limit), the amounts of a 402 credit refusal."""

    type: str
    title: str
    status: int
    detail: str
    error: str
    errors: list[FieldError] | None = None


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The problem responses for ``statuses`` (use in a route's ``responses=``)."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            generate_examples=False,
            description=DESCRIPTIONS.get(status, HTTPStatus(status).phrase),
            media_type=PROBLEM,
        )
        for status in sorted(set(statuses))
    }


def binary_body(media_type: str, description: str) -> RequestBody:
    """A request body the handler reads as bytes."""
    schema = Schema(type=OpenAPIType.STRING, format="binary")  # type: ignore[arg-type]
    return RequestBody(
        content={media_type: OpenAPIMediaType(schema=schema)},
        description=description,
        required=True,
    )


def json_body(description: str, schema: Schema | None = None) -> RequestBody:
    """A JSON request body the handler decodes itself."""
    return RequestBody(
        content={
            MediaType.JSON: OpenAPIMediaType(schema=schema or Schema(type=OpenAPIType.OBJECT))
        },
        description=description,
        required=True,
    )


def operation(*, public: bool = False, body: RequestBody | None = None) -> type[Operation]:
    """An ``Operation`` class that marks the route public and/or documents its body.

    A public route that lists no 400 gets the card guard's (``card_guard.py``: it runs on
    every route, probes included)."""

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            if public:
                self.security = []
                responses = self.responses if self.responses is not None else {}
                responses.setdefault("400", _card_guard_400())
                self.responses = responses
            if body is not None and self.request_body is None:
                self.request_body = body

    return DocumentedOperation


PUBLIC = operation(public=True)


def _card_guard_400() -> OpenAPIResponse:
    return OpenAPIResponse(
        description=(
            "A stored header (`User-Agent`, `Idempotency-Key`) looks like it holds a card "
            "number; refused on every route, nothing changed"
        ),
        content={PROBLEM: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))},
    )


def _camel(words: list[str]) -> str:
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def operation_id(
    route_handler: HTTPRouteHandler,
    http_method: Method,
    path_components: list[str | PathParameterDefinition],
) -> str:
    """``getCredits`` for ``credits`` on GET, ``createApiKey`` for ``create_api_key``;
    handlers with several methods or paths add the method and ``WithPath`` after the name."""
    method = str(getattr(http_method, "value", http_method)).lower()
    words = [w for w in route_handler.handler_name.split("_") if w]
    if words[0] not in VERBS:
        words.insert(0, method)
    if len(route_handler.http_methods) > 1:
        words.append(method)
    if len(route_handler.paths) > 1 and any(
        getattr(c, "name", None) == "path" for c in path_components
    ):
        words.append("withPath")
    return _camel(words)


__all__ = [
    "ADMIN",
    "AUTHED",
    "AUTH_SCHEMES",
    "DESCRIPTION",
    "PROBLEM",
    "PUBLIC",
    "TAGS",
    "FieldError",
    "Problem",
    "answers",
    "binary_body",
    "errors",
    "json_body",
    "operation",
    "operation_id",
    "passthrough",
]


def answers(data: type, *statuses: int, description: str) -> dict[int, ResponseSpec]:
    """Other success statuses a route answers with the same body (``responses=``)."""
    return {
        status: ResponseSpec(data_container=data, generate_examples=False, description=description)
        for status in statuses
    }


TAGS = [
    Tag(name="operations", description="Liveness, readiness and Prometheus metrics"),
    Tag(name="auth", description="Accounts, login sessions and API keys"),
    Tag(name="billing", description="Credits, transactions, spending limits, payments"),
    Tag(name="usage", description="Daily usage and usage sessions"),
    Tag(name="gpu", description="GPU marketplace: offers, rentals, reservations"),
    Tag(name="proxy", description="Requests to your instances, and load balancing"),
    Tag(name="models", description="Hosted models: upload, list, predict"),
    Tag(name="oip", description="Open Inference Protocol v2 (KServe/Triton compatible)"),
    Tag(name="agents", description="Agent protocols: A2A, ACP, FIPA, KQML, LangChain, discovery"),
    Tag(name="admin", description="Operator views and actions (admin role)"),
]
DESCRIPTION = (
    "One account, one API and one bill across GPU marketplaces. Money is a USD string with "
    "six decimals; every error is an RFC 9457 problem (`application/problem+json`)."
)


def passthrough(description: str, status: int = 200) -> dict[int, ResponseSpec]:
    """A success answer whose body is someone else's (an instance's), any media type."""
    return {
        status: ResponseSpec(
            data_container=bytes,
            generate_examples=False,
            description=description,
            media_type="application/octet-stream",
        )
    }
