"""The agent doors as Litestar routes, and the lifespan that starts the MCP session manager.

Public: ``/.well-known/agent-card.json`` and ``/agent/discover``. Everything else needs an API
key or Bearer token and counts against the rate limit (``provide_principal``, as REST).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Litestar, Request, Response, Router, asgi, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.handlers import ASGIRouteHandler, HTTPRouteHandler

from infrastructure.auth import Principal
from interfaces.agents import a2a_simple, acp, fipa, kqml, langchain
from interfaces.agents.a2a_rpc import A2ARpc, agent_card_json
from interfaces.agents.detect import detect
from interfaces.agents.discovery import discover_document
from interfaces.agents.mcp_server import McpDoor
from interfaces.agents.wire import Caller, decode, failure
from interfaces.http.errors import PROBLEM
from interfaces.http.openapi import AUTHED, PUBLIC, errors, json_body, operation
from interfaces.http.security import provide_principal
from interfaces.presenters.agents import (
    A2AReply,
    AcpReply,
    AgentCard,
    AnyReply,
    Discovery,
    FipaReply,
    JsonRpcResponse,
    KqmlReply,
    LangchainReply,
    LangchainTools,
)

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

    from infrastructure.proxy.runtime import ProxyRuntime
    from interfaces.bootstrap import Container

Translator = Callable[[Caller, Any], Awaitable[tuple[int, dict[str, Any]]]]
TRANSLATORS: dict[str, Translator] = {
    "a2a": a2a_simple.handle,
    "acp": acp.handle,
    "fipa": fipa.handle,
    "kqml": kqml.handle,
    "langchain": langchain.handle,
}
REPLIES: dict[str, type[msgspec.Struct]] = {
    "a2a": A2AReply,
    "acp": AcpReply,
    "fipa": FipaReply,
    "kqml": KqmlReply,
    "langchain": LangchainReply,
}
MCP_PATH = "/api/v1/mcp"
MESSAGE = operation(body=json_body("The agent message, in the protocol the route names"))
DOOR_ERRORS = errors(*AUTHED, 402, 404, 413)


@dataclass
class AgentDoors:
    """Per-app state: the services, the MCP session manager and the A2A dispatcher."""

    container: Container
    runtime: ProxyRuntime
    mcp: McpDoor
    rpc: A2ARpc


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Build the doors over the app's container and proxy runtime; run the MCP manager."""
    container, runtime = app.state.container, app.state.proxy
    doors = AgentDoors(container, runtime, McpDoor(container, runtime), A2ARpc(container, runtime))
    app.state.agents = doors
    async with doors.mcp.manager.run():
        yield


def doors_of(request: Request[Any, Any, Any]) -> AgentDoors:
    doors: AgentDoors = request.app.state.agents
    return doors


def _json(status: int, body: dict[str, Any], **headers: str) -> Response[Any]:
    """A reply; an error reply is an RFC 9457 problem, so it says so in its media type."""
    media_type = PROBLEM if status >= 400 else "application/json"
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def _reply(protocol: str, status: int, body: dict[str, Any]) -> Response[Any]:
    """A translator's reply: a success is its protocol's typed reply (``REPLIES``); a reply
    with a member the type does not show fails here rather than go out undocumented."""
    if status >= 400:
        return _json(status, body)
    return Response(msgspec.convert(body, REPLIES[protocol]), status_code=status)


async def _translate(
    request: Request[Any, Any, Any], principal: Principal, protocol: str
) -> Response[Any]:
    doors = doors_of(request)
    body = await request.body()
    message = decode(body)
    if protocol == "a2a" and isinstance(message, dict) and "jsonrpc" in message:
        return await doors.rpc.respond(request, body, principal)
    caller = Caller(doors.container, doors.runtime, principal)
    status, reply = await TRANSLATORS[protocol](caller, message)
    return _reply(protocol, status, reply)


@post(
    "/a2a",
    status_code=200,
    summary="A2A: JSON-RPC (message/send, tasks/get) or {action, …}",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "Agent-to-Agent (A2A) protocol: a JSON-RPC 2.0 request (`message/send`, `tasks/get`) or a "
        "plain `{action, parameters}` message. Actions are the agent card's skills (credits, "
        "offers, rentals, spending, proxy, …) and run as the caller, so they change what the same "
        "REST call would (renting takes a credit hold). Any authenticated caller. 400 for a "
        "message that is not A2A; 402 and 404 as the action's REST route; 413 over the body limit."
    ),
)
async def a2a(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> Response[A2AReply | JsonRpcResponse]:
    return await _translate(request, principal, "a2a")


@post(
    "/acp",
    status_code=200,
    summary="ACP: {header: {sender, message_type}, payload}",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "Agent Communication Protocol: a message `{header: {sender, message_type}, payload}` whose "
        "payload names an action (the same actions as A2A), run as the caller and changing what "
        "the same REST call would. Any authenticated caller. 400 for a malformed message; 402 and "
        "404 as the action's REST route; 413 over the body limit."
    ),
)
async def acp_door(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> Response[AcpReply]:
    return await _translate(request, principal, "acp")


@post(
    "/fipa",
    status_code=200,
    summary="FIPA ACL: request, query-ref, query-if, cfp, …",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "FIPA ACL: a message with a performative (request, query-ref, query-if, cfp, …) whose "
        "content names an action (the same actions as A2A), run as the caller; the answer is an "
        "ACL reply (inform, agree, refuse, failure, propose). Any authenticated caller. 400 for a "
        "malformed message; 402 and 404 as the action's REST route; 413 over the body limit."
    ),
)
async def fipa_door(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> Response[FipaReply]:
    return await _translate(request, principal, "fipa")


@post(
    "/kqml",
    status_code=200,
    summary="KQML: ask-one, ask-all, ask-if, tell, achieve",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "KQML: a message with a performative (ask-one, ask-all, ask-if, tell, achieve) whose "
        "content names an action (the same actions as A2A), run as the caller; the answer is a "
        "KQML reply. Any authenticated caller. 400 for a malformed message; 402 and 404 as the "
        "action's REST route; 413 over the body limit."
    ),
)
async def kqml_door(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> Response[KqmlReply]:
    return await _translate(request, principal, "kqml")


@post(
    "/langchain",
    status_code=200,
    summary="LangChain: execute a tool",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "LangChain: executes one tool from GET /langchain/tools with its arguments, as the caller, "
        "and answers the tool's output; tools that rent, destroy or proxy change what the same "
        "REST call would. Any authenticated caller. 400 for an unknown tool or bad arguments; 402 "
        "and 404 as the tool's REST route; 413 over the body limit."
    ),
)
async def langchain_door(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> Response[LangchainReply]:
    return await _translate(request, principal, "langchain")


@get(
    "/langchain/tools",
    summary="LangChain tool definitions with argument schemas",
    responses=errors(401, 429),
    description=(
        "The LangChain tool definitions that POST /langchain executes: name, description and a "
        "JSON Schema of the arguments for each. Any authenticated caller; changes nothing."
    ),
)
async def langchain_tools(
    principal: NamedDependency[Principal],  # noqa: ARG001 - runs the auth dependency
) -> LangchainTools:
    return msgspec.convert({"tools": langchain.tools()}, LangchainTools)


@post(
    "/agent",
    status_code=200,
    summary="Any agent protocol, detected from the message shape",
    operation_class=MESSAGE,
    responses=DOOR_ERRORS,
    description=(
        "One door for every agent protocol: the protocol (A2A, ACP, FIPA ACL, KQML, LangChain) is "
        "detected from the message's shape and the message is handled as that protocol's own route "
        "would, with `X-Agent-Protocol` naming it; an MCP message gets 307 to /api/v1/mcp. Any "
        "authenticated caller. 400 when no protocol matches; 402 and 404 as the action's REST "
        "route; 413 over the body limit."
    ),
)
async def agent(
    request: Request[Any, Any, Any], principal: NamedDependency[Principal]
) -> Response[AnyReply]:
    body = await request.body()
    message = decode(body)
    try:
        protocol = detect(message)
    except Exception as exc:
        status, problem = failure(exc)
        return _json(status, problem)
    if protocol == "mcp":
        note = {
            "detected": "mcp",
            "endpoint": MCP_PATH,
            "message": "MCP is served over Streamable HTTP at /api/v1/mcp (redirected)",
        }
        return _json(307, note, Location=MCP_PATH, **{"X-Agent-Protocol": "mcp"})
    answer: Response[Any]
    doors = doors_of(request)
    if protocol == "a2a-jsonrpc":
        answer = await doors.rpc.respond(request, body, principal)
    else:
        caller = Caller(doors.container, doors.runtime, principal)
        answer = _reply(protocol, *await TRANSLATORS[protocol](caller, message))
    answer.headers["X-Agent-Protocol"] = protocol
    return answer


PUBLIC_CACHE = CacheControlHeader(public=True, max_age=300)


@get(
    "/agent/discover",
    summary="Agent protocols, endpoints and capabilities (public)",
    cache_control=PUBLIC_CACHE,
    operation_class=PUBLIC,
    tags=["agents"],
    description=(
        "The agent protocols this server speaks, their endpoints, how to authenticate and what "
        "each can do, for agents finding their way. Public (no credential) and cacheable for 5 "
        "minutes; it changes nothing."
    ),
)
async def discover() -> Discovery:
    return discover_document()


@get(
    "/.well-known/agent-card.json",
    summary="A2A agent card (public)",
    cache_control=PUBLIC_CACHE,
    operation_class=PUBLIC,
    tags=["agents"],
    description=(
        "The A2A agent card: name, description, skills, JSON-RPC endpoints and security schemes, "
        "with URLs from `PUBLIC_URL` (never the request's Host). Public (no credential) and "
        "cacheable for 5 minutes; it changes nothing."
    ),
)
async def agent_card(request: Request[Any, Any, Any]) -> AgentCard:
    """URLs from ``PUBLIC_URL`` (or the listening address), never the request's ``Host``."""
    return msgspec.convert(
        agent_card_json(doors_of(request).container.settings.http.base_url), AgentCard
    )


@asgi(MCP_PATH, copy_scope=False)
async def mcp(scope: Scope, receive: Receive, send: Send) -> None:
    """MCP Streamable HTTP (POST messages, GET stream, DELETE session)."""
    doors: AgentDoors = scope["app"].state.agents
    await doors.mcp(scope, receive, send)


router = Router(
    path="/api/v1",
    tags=["agents"],
    dependencies={"principal": Provide(provide_principal)},
    route_handlers=[a2a, acp_door, fipa_door, kqml_door, langchain_door, langchain_tools, agent],
)
route_handlers: list[Router | HTTPRouteHandler | ASGIRouteHandler] = [
    router,
    discover,
    agent_card,
    mcp,
]
